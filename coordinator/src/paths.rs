//! The farm's storage layout: [`stylefarm_shared::layout`], the one place
//! a key is formed, shared with the workers, farmctl and the load test.

pub use stylefarm_shared::layout::*;
