//! The farm's wire contract, generated from `proto/farm.proto`: the
//! coordinator, the workers and farmctl share these types and nothing else
//! of each other.

#![allow(clippy::all)]
tonic::include_proto!("stylefarm.v1");
