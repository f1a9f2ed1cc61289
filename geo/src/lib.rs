//! cadenza-geo
