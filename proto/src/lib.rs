//! The farm's gRPC contract (`farm.proto`); not written yet — the farm issue adds it.
