//! The farm's wire contract, generated from `proto/farm.proto`: the
//! coordinator, the workers and farmctl share these types and nothing else
//! of each other. Messages and stubs only — how clients authenticate and
//! connect lives with the clients (`stylefarm_shared::client`) and the
//! server (the coordinator's `auth`).

#![allow(clippy::all)]
tonic::include_proto!("stylefarm.v2");
