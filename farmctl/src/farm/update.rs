//! `farmctl pause ID`, `farmctl resume ID` and `farmctl priority ID N`: a
//! collection's queued jobs wait (running ones finish their attempt),
//! start again, or take another place in the queue.

use anyhow::Result;
use stylefarm_proto as pb;

use super::{call, resolve, Coordinators, Kind};

/// Applies `paused` and/or `priority` to collection `id` (its id or a
/// unique start of it) and says what it is now.
pub async fn update(url: &Coordinators, id: &str, paused: Option<bool>, priority: Option<i32>) -> Result<()> {
    let id = resolve(url, id, Kind::Collection).await?;
    let c = call(url, |mut c| {
        let r = pb::UpdateCollectionRequest { collection_id: id.clone(), paused, priority };
        async move { c.update_collection(r).await }
    })
    .await?
    .into_inner();
    let state = pb::CollectionState::try_from(c.state).unwrap_or_default().label();
    let paused = if c.paused { ", paused (its queued jobs wait; running ones finish)" } else { "" };
    println!("collection {} is {state}, priority {}{paused}", c.collection_id, c.priority);
    Ok(())
}
