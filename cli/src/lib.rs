//! # portcullis-cli
//!
//! What the `portcullis` binary adds around the token service library (`portcullis`): the
//! command line, the reconcilers' two modes (manifests directory and Kubernetes) that register
//! clients in the service in-process, the web console with its rule tester, and `portcullis
//! test`. A program embedding the token service needs none of this; nothing depends on this
//! crate.

pub mod callout_client;
pub mod cli;
pub mod console;
pub mod kubernetes_mode;
pub mod manifests_mode;
pub mod rule_test;
