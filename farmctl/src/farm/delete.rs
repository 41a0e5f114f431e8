//! `farmctl delete ID [--cancel]`: a collection and everything it left in
//! storage go (its inputs too, where no other collection uses them).

use anyhow::Result;
use stylefarm_proto as pb;
use stylefarm_shared::budget::human;

use super::{call, resolve, Coordinators, Kind};

pub async fn delete(url: &Coordinators, id: &str, cancel: bool) -> Result<()> {
    let id = resolve(url, id, Kind::Collection).await?;
    let id = id.as_str();
    let r = call(url, |mut c| {
        let r = pb::DeleteCollectionRequest { collection_id: id.into(), cancel };
        async move { c.delete_collection(r).await }
    })
    .await?
    .into_inner();
    let then = if r.finished { "" } else { " (its cancelled jobs' leases end first: the coordinator finishes within a lease length)" };
    println!("deleted collection {id}: {} objects, {} removed from storage{then}", r.objects, human(r.bytes));
    Ok(())
}
