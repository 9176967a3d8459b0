//! linkemu (being built).
