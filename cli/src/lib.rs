//! cadenza
