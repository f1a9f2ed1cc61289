//! cadenza-origin
