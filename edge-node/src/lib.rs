//! cadenza-edge
