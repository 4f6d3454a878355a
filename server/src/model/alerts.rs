//! Alerts states and kinds (see the parent module for why they live here).
