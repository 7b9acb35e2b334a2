# Reference values for the models evalkit fits on degenerate pilot data
# (tests/test_degenerate_data.py). Run from tests/data: Rscript make_reference_degenerate.R
# Writes degenerate_firth.csv and reference_degenerate.json. Written with R 4.2.2,
# logistf 1.26.1, brglm2 0.9, MASS 7.3-58.2, sandwich 3.0-2, jsonlite 1.8.4 (Debian has
# no r-cran-logistf package: it was built from the logistf sources; the rest are Debian's
# r-cran-brglm2 r-cran-mass r-cran-sandwich r-cran-jsonlite).
suppressMessages({
  if (!exists("logistf")) library(logistf)
  library(brglm2); library(MASS); library(sandwich); library(jsonlite)
})
out <- list()

# F. Firth's penalised likelihood (evalkit.effects.firth_logistic) where maximum likelihood
#    has no finite odds ratio. logistf's defaults (profile penalised likelihood interval,
#    penalised likelihood-ratio p-value) with its iterations run to 1e-12 rather than its
#    default 1e-5, so that the numbers are the exact maximum and limits; brglm2's mean
#    bias-reducing adjusted score (type "AS_mean", Firth's for a logistic model) is a
#    second implementation of the estimate.
#    quasi: 30 people, 15 per arm; nobody in the intervention arm has the outcome, 3 of
#           the 15 in the comparison arm do; adjusted for age and benefit.
#    complete: 24 people, 12 per arm; everybody in the intervention arm has it, 4 of 12
#           in the comparison arm; adjusted for age.
set.seed(20270402)
quasi <- data.frame(arm = rep(c(0, 1), each = 15))
quasi$age <- round(runif(30, 18, 64))
quasi$benefit <- sample(c("ESA", "JSA", "UC"), 30, TRUE)
quasi$in_work <- 0
quasi$in_work[sample(1:15, 3)] <- 1
complete <- data.frame(arm = rep(c(0, 1), each = 12))
complete$age <- round(runif(24, 18, 64))
complete$in_work <- c(sample(rep(c(1, 0), c(4, 8))), rep(1, 12))
firth <- rbind(cbind(case = "quasi", quasi),
               cbind(case = "complete", complete, benefit = NA)[, names(cbind(case = "quasi", quasi))])
write.csv(firth, "degenerate_firth.csv", row.names = FALSE, na = "")
firth <- read.csv("degenerate_firth.csv", stringsAsFactors = FALSE)
tight <- logistf.control(maxit = 1000, lconv = 1e-12, gconv = 1e-12, xconv = 1e-12)
tight_pl <- logistpl.control(maxit = 1000, lconv = 1e-12, xconv = 1e-12)
firth_of <- function(formula, d) {
  fit <- logistf(formula, data = d, control = tight, plcontrol = tight_pl)
  br <- glm(formula, data = d, family = binomial, method = "brglmFit", type = "AS_mean",
            control = list(epsilon = 1e-14, maxit = 1000))
  ml <- suppressWarnings(glm(formula, data = d, family = binomial))
  list(coef = unname(coef(fit)["arm"]), std_error = sqrt(vcov(fit)["arm", "arm"]),
       conf_low = unname(fit$ci.lower["arm"]), conf_high = unname(fit$ci.upper["arm"]),
       p_value = unname(fit$prob["arm"]), brglm2_coef = unname(coef(br)["arm"]),
       ml_coef = unname(coef(ml)["arm"]))
}
out$firth <- list(
  data = "degenerate_firth.csv",
  quasi = c(firth_of(in_work ~ arm + age + benefit, firth[firth$case == "quasi", ]),
            list(covariates = c("age", "benefit"))),
  complete = c(firth_of(in_work ~ arm + age, firth[firth$case == "complete", ]),
               list(covariates = I("age"))))

# G. Negative binomial fits on which evalkit's first Newton-Raphson fit of the dispersion
#    failed ("invalid value encountered in log"): counts barely more variable than Poisson
#    ones in 16 places of an estates-like pilot (numpy's default_rng(11) and (31), 300
#    people: place uniform on 16, odd places in the intervention arm, counts Poisson with
#    mean 1.2, or 0.8 with the intervention). MASS::glm.nb with sandwich covariance, as in
#    make_reference_extra.R section E.
d <- read.csv("degenerate_counts.csv", stringsAsFactors = FALSE)
d$benefit <- factor(d$benefit, levels = c("ESA", "JSA", "UC"))
nb_of <- function(fit, dd, clustered) {
  b <- unname(coef(fit)["arm"])
  if (clustered) {
    v <- vcovCL(fit, cluster = dd$place, type = "HC1")
    df <- length(unique(dd$place)) - 1
    q <- qt(0.975, df)
  } else {
    v <- sandwich(fit)
    df <- NA
    q <- qnorm(0.975)
  }
  se <- sqrt(v["arm", "arm"])
  p <- if (clustered) 2 * pt(-abs(b / se), df) else 2 * pnorm(-abs(b / se))
  list(log_estimate = b, log_std_error = se, df = df, p_value = p, estimate = exp(b),
       conf_low = exp(b - q * se), conf_high = exp(b + q * se), theta = fit$theta)
}
out$negative_binomial <- list(data = "degenerate_counts.csv",
  covariates = c("age", "benefit", "months_unemployed"), cluster = "place")
for (set in unique(d$dataset)) {
  dd <- d[d$dataset == set, ]
  fit <- glm.nb(contacts ~ arm + age + benefit + months_unemployed, data = dd,
                control = glm.control(epsilon = 1e-10, maxit = 1000))
  out$negative_binomial[[set]] <- list(place = nb_of(fit, dd, TRUE),
                                       individual = nb_of(fit, dd, FALSE))
}
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null"),
           "reference_degenerate.json")
