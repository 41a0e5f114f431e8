//! The farm's wire contract, generated from `proto/farm.proto`: the
//! coordinator, the workers and farmctl share these types and nothing else
//! of each other — plus [`security`], how a client presents itself (bearer
//! token, TLS), which both sides must agree on.

#![allow(clippy::all)]
tonic::include_proto!("stylefarm.v1");

pub mod security;
