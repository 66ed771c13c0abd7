# Reference values for persephone's Holt-Winters fitter, made with R's own
# stats::HoltWinters() and predict() on two classic series from R's datasets
# package: co2 (Mauna Loa CO2, monthly, 1959-1997, 468 values) and
# AirPassengers (monthly airline passengers, 1949-1960, 144 values).
#
# Regenerate:   Rscript hw_reference.R   (run in this directory)
# Writes co2.csv and airpassengers.csv (the series, one value a line) and
# hw_reference.csv (series,seasonal,quantity,index,value).
options(digits = 17)
write_series <- function(x, file) {
  writeLines(trimws(formatC(as.numeric(x), digits = 17, format = "g")), file)
}
write_series(co2, "co2.csv")
write_series(AirPassengers, "airpassengers.csv")

rows <- list()
add <- function(series, seasonal, quantity, index, value) {
  rows[[length(rows) + 1]] <<- data.frame(series = series, seasonal = seasonal,
    quantity = quantity, index = index, value = trimws(formatC(value, digits = 17, format = "g")))
}
ref <- function(name, x, seasonal) {
  m <- HoltWinters(x, seasonal = seasonal)
  add(name, seasonal, "alpha", 0, m$alpha)
  add(name, seasonal, "beta", 0, m$beta)
  add(name, seasonal, "gamma", 0, m$gamma)
  add(name, seasonal, "sse", 0, m$SSE)
  cf <- m$coefficients
  for (i in seq_along(cf)) add(name, seasonal, "coef", i - 1, cf[[i]])
  p <- predict(m, n.ahead = 24, prediction.interval = TRUE, level = 0.95)
  for (h in 1:24) {
    add(name, seasonal, "fit", h, p[h, "fit"])
    add(name, seasonal, "upr", h, p[h, "upr"])
    add(name, seasonal, "lwr", h, p[h, "lwr"])
  }
  # The filter alone, at R's optimiser start (0.3, 0.1, 0.1): checks the
  # initialisation (decompose of the first two periods) and the recursion
  # without the optimiser.
  s <- HoltWinters(x, alpha = 0.3, beta = 0.1, gamma = 0.1, seasonal = seasonal)
  add(name, seasonal, "sse_at_start", 0, s$SSE)
}
ref("co2", co2, "additive")
ref("airpassengers", AirPassengers, "multiplicative")
ref("airpassengers", AirPassengers, "additive")
out <- do.call(rbind, rows)
write.csv(out, "hw_reference.csv", row.names = FALSE, quote = FALSE)
cat(R.version.string, "\n", file = "hw_reference.version")
