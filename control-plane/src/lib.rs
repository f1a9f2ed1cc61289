//! cadenza-control-plane
