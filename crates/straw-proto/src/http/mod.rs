//! HTTP accelerator pair (todo).
