# Extra reference values from R's estimatr (lm_robust, difference_in_means) and clubSandwich
# for evalkit's estimators: every coefficient, not only the treatment. Each case writes its
# data to CSV and reads it back, so R and the Python tests fit exactly the same numbers.
# Run from tests/data: Rscript make_reference_extra.R  (Debian packages r-base-core
# r-cran-estimatr r-cran-clubsandwich r-cran-jsonlite r-cran-sandwich). Written with
# R 4.2.2, estimatr 1.0.0, clubSandwich 0.5.8.
suppressMessages({library(estimatr); library(clubSandwich); library(jsonlite)})

table_of <- function(m) {
  terms <- names(coef(m))
  out <- lapply(seq_along(terms), function(i) list(
    estimate = unname(coef(m)[i]), std_error = unname(m$std.error[i]),
    df = unname(m$df[i]), p_value = unname(m$p.value[i]),
    conf_low = unname(m$conf.low[i]), conf_high = unname(m$conf.high[i])))
  names(out) <- terms
  out
}
club_of <- function(fit, cluster) {
  ct <- coef_test(fit, vcov = "CR2", cluster = cluster, test = "Satterthwaite")
  out <- lapply(seq_len(nrow(ct)), function(i) list(
    std_error = ct$SE[i], df = ct$df_Satt[i], p_value = ct$p_Satt[i]))
  names(out) <- ct$Coef
  out
}
dim_of <- function(m) table_of(m)[[1]]
roundtrip <- function(d, file) {
  write.csv(d, file, row.names = FALSE)
  read.csv(file, stringsAsFactors = FALSE)
}
out <- list()

# A. Place design with a categorical and a logical covariate, ten places of very unequal
#    size (one place of a single person).
set.seed(20240611)
ids <- sprintf("E%02d", 1:10)
sizes <- c(1, 3, 5, 9, 14, 20, 26, 33, 41, 60)
d <- data.frame(place = rep(ids, sizes))
d$arm <- as.integer(d$place %in% sample(ids, 5))
n <- nrow(d)
d$age <- round(runif(n, 18, 64))
d$benefit <- sample(c("ESA", "JSA", "UC"), n, TRUE, c(0.5, 0.3, 0.2))
d$woman <- sample(c(TRUE, FALSE), n, TRUE)
u <- rnorm(10, 0, 3)[match(d$place, ids)]
d$score <- round(50 + 2 * d$arm + 0.1 * (d$age - 40) - 2 * (d$benefit == "ESA") +
                 d$woman + u + rnorm(n, 0, 6), 2)
d <- roundtrip(d, "extra_place_mixed.csv")
f <- score ~ arm + age + benefit + woman
out$place_mixed <- list(
  data = "extra_place_mixed.csv", outcome = "score", treatment = "arm",
  covariates = c("age", "benefit", "woman"), cluster = "place",
  cr2 = table_of(lm_robust(f, data = d, clusters = place, se_type = "CR2")),
  cr1 = table_of(lm_robust(f, data = d, clusters = place, se_type = "stata")),
  hc2 = table_of(lm_robust(f, data = d, se_type = "HC2")),
  hc1 = table_of(lm_robust(f, data = d, se_type = "stata")),
  clubsandwich_cr2 = club_of(lm(f, data = d), d$place))

# B. Places randomised within four areas (blocks: two of four places treated in each area);
#    the analysis adds area fixed effects as dummies.
set.seed(20240612)
areas <- c("Central", "East", "North", "West")
pl <- data.frame(place = sprintf("Q%02d", 1:16), area = rep(areas, each = 4))
pl$arm <- as.vector(sapply(1:4, function(b) sample(c(1, 1, 0, 0))))
pl$size <- sample(6:40, 16, TRUE)
d <- pl[rep(1:16, pl$size), c("place", "area", "arm")]
n <- nrow(d)
d$months_unemployed <- round(24 + rexp(n, 1 / 30))
d$esa <- rbinom(n, 1, 0.5)
area_effect <- c(Central = 0, East = 3, North = -2, West = 1)
u <- rnorm(16, 0, 2.5)[match(d$place, pl$place)]
d$wellbeing <- round(45 + 1.5 * d$arm + area_effect[d$area] - 0.04 * d$months_unemployed +
                     1.2 * d$esa + u + rnorm(n, 0, 7), 1)
d <- roundtrip(d, "extra_blocked_places.csv")
f <- wellbeing ~ arm + months_unemployed + esa + area
out$blocked_places <- list(
  data = "extra_blocked_places.csv", outcome = "wellbeing", treatment = "arm",
  covariates = c("months_unemployed", "esa"), cluster = "place", blocks = "area",
  cr2 = table_of(lm_robust(f, data = d, clusters = place, se_type = "CR2")),
  cr1 = table_of(lm_robust(f, data = d, clusters = place, se_type = "stata")),
  clubsandwich_cr2 = club_of(lm(f, data = d), d$place))

# C. A place-level dummy that only one place has: that place's block of the hat matrix has
#    an eigenvalue of 1 and (I - H_gg)^(-1/2) is a generalised inverse square root.
set.seed(20240613)
ids <- sprintf("S%02d", 1:8)
d <- data.frame(place = rep(ids, c(5, 8, 10, 12, 15, 20, 25, 30)))
d$arm <- as.integer(d$place %in% ids[c(1, 3, 6, 8)])
d$special <- as.integer(d$place == "S02")
d$x <- round(rnorm(nrow(d)), 4)
d$y <- round(rnorm(nrow(d)) + rnorm(8)[match(d$place, ids)], 4)
d <- roundtrip(d, "extra_singular_place.csv")
f <- y ~ arm + special + x
out$singular_place <- list(
  data = "extra_singular_place.csv", outcome = "y", treatment = "arm",
  covariates = c("special", "x"), cluster = "place",
  cr2 = table_of(lm_robust(f, data = d, clusters = place, se_type = "CR2")),
  clubsandwich_cr2 = club_of(lm(f, data = d), d$place))

# D. Individual design with named arms ("usual" is the comparison), randomised within pairs
#    and, for the mixed case, within blocks of two or four.
set.seed(20240614)
n <- 60
d <- data.frame(pair = sprintf("M%02d", rep(1:30, each = 2)))
d$arm <- as.vector(sapply(1:30, function(i) sample(c("usual", "keyworker"))))
d$mixed_block <- sprintf("B%02d", c(rep(1:10, each = 2), rep(11:20, each = 4)))
d$age <- round(runif(n, 18, 64))
d$hours <- round(10 + 4 * (d$arm == "keyworker") + 0.05 * d$age + rnorm(n, 0, 5), 2)
d <- roundtrip(d, "extra_named_arms.csv")
d$arm_f <- factor(d$arm, levels = c("usual", "keyworker"))
# mixed blocks: the arms within each block of four must be balanced for estimatr
mixed_ok <- all(tapply(d$arm, d$mixed_block, function(a) sum(a == "keyworker")) >= 1)
stopifnot(mixed_ok)
out$named_arms <- list(
  data = "extra_named_arms.csv", outcome = "hours", treatment = "arm",
  arms = c("usual", "keyworker"), covariates = c("age"),
  hc2 = table_of(lm_robust(hours ~ arm_f + age, data = d, se_type = "HC2")),
  hc1 = table_of(lm_robust(hours ~ arm_f + age, data = d, se_type = "stata")),
  difference_in_means = dim_of(difference_in_means(hours ~ arm, data = d,
    condition1 = "usual", condition2 = "keyworker")),
  matched_pair_difference_in_means = dim_of(difference_in_means(hours ~ arm, data = d,
    blocks = pair, condition1 = "usual", condition2 = "keyworker")),
  mixed_block_difference_in_means = dim_of(suppressWarnings(difference_in_means(hours ~ arm,
    data = d, blocks = mixed_block, condition1 = "usual", condition2 = "keyworker"))))

writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "reference_extra.json")

# E. Registered ratio models (evalkit.effects.ratio_model): logistic, Poisson and negative
#    binomial (MASS::glm.nb) with cluster-robust covariance (sandwich::vcovCL, type "HC1":
#    G/(G-1) (N-1)/(N-K)) and t on G - 1 df for a place design, and the HC0 sandwich
#    (sandwich::sandwich) with normal inference for an individual design. Needs only the
#    Debian packages r-cran-sandwich r-cran-mass r-cran-jsonlite and runs on its own:
#      sed -n '/^# E\. Registered ratio models/,$p' make_reference_extra.R | Rscript -
#    Written with R 4.2.2, sandwich 3.0-2, MASS 7.3-58.2; writes extra_ratio_models.csv
#    and reference_ratio_models.json.
suppressMessages({library(sandwich); library(MASS); library(jsonlite)})
set.seed(20240615)
ids <- sprintf("P%02d", 1:12)
sizes <- c(8, 11, 14, 17, 20, 23, 26, 29, 32, 35, 38, 41)
d <- data.frame(place = rep(ids, sizes))
d$arm <- as.integer(d$place %in% sample(ids, 6))
n <- nrow(d)
d$age <- round(runif(n, 18, 64))
d$benefit <- sample(c("ESA", "JSA", "UC"), n, TRUE, c(0.5, 0.3, 0.2))
u <- rnorm(12, 0, 0.3)[match(d$place, ids)]
mu <- exp(0.2 - 0.4 * d$arm + 0.01 * (d$age - 40) + 0.3 * (d$benefit == "ESA") + u)
d$contacts <- rnbinom(n, size = 1.5, mu = mu)
d$in_work <- rbinom(n, 1, plogis(-1.5 + 0.5 * d$arm - 0.02 * (d$age - 40) + u))
write.csv(d, "extra_ratio_models.csv", row.names = FALSE)
d <- read.csv("extra_ratio_models.csv", stringsAsFactors = FALSE)
d$benefit <- factor(d$benefit, levels = c("ESA", "JSA", "UC"))
ratio_of <- function(fit, clustered) {
  b <- unname(coef(fit)["arm"])
  if (clustered) {
    v <- vcovCL(fit, cluster = ~place, type = "HC1")
    df <- length(unique(d$place)) - 1
    q <- qt(0.975, df)
  } else {
    v <- sandwich(fit)
    df <- NA
    q <- qnorm(0.975)
  }
  se <- sqrt(v["arm", "arm"])
  p <- if (clustered) 2 * pt(-abs(b / se), df) else 2 * pnorm(-abs(b / se))
  list(log_estimate = b, log_std_error = se, df = df, p_value = p,
       estimate = exp(b), conf_low = exp(b - q * se), conf_high = exp(b + q * se),
       theta = if (!is.null(fit$theta)) fit$theta else NA)
}
tight <- glm.control(epsilon = 1e-14, maxit = 100)  # converged past R's default 1e-8
ratio <- list(data = "extra_ratio_models.csv", covariates = c("age", "benefit"),
  cluster = "place")
for (clustered in c(TRUE, FALSE)) {
  key <- if (clustered) "place" else "individual"
  ratio[[key]] <- list(
    logistic = ratio_of(glm(in_work ~ arm + age + benefit, family = binomial, data = d,
                            control = tight),
                        clustered),
    poisson = ratio_of(glm(contacts ~ arm + age + benefit, family = poisson, data = d,
                           control = tight),
                       clustered),
    negative_binomial = ratio_of(glm.nb(contacts ~ arm + age + benefit, data = d,
                                        control = tight), clustered))
}
writeLines(toJSON(ratio, auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null"),
           "reference_ratio_models.json")
