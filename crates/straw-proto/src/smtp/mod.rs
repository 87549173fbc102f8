//! SMTP accelerator pair (in progress).
