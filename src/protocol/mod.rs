//! The Open Inference Protocol (KServe v2) as maas speaks it on both sides: the server's REST and
//! gRPC endpoints (`crate::serve`) and the `--url` client and `bench` (`crate::remote`).
//!
//! [`names`] the wire names (routes, headers, datatypes, parameters); [`metadata`] the metadata
//! messages, one schema that the server writes and the client reads; [`rest`] the same for the
//! JSON of REST's infer request and answer; [`tensor_data`] the reader
//! of a JSON tensor's `data`; [`checks`] the checks of an infer request, with one set of
//! messages for every transport; [`infer`] a request and its answer apart from any transport.
//! Nothing here knows HTTP or gRPC: each transport translates to and from these.

pub mod checks;
pub mod infer;
pub mod metadata;
pub mod names;
pub mod rest;
pub mod tensor_data;

pub use self::checks::{Input, Invalid, TensorData};
pub use self::infer::{InferRequest, InferResponse};
