//! cadenza-player
