//! Who gets a free worker when several people share the farm: the rule,
//! pure (like [`crate::machine`] for a job's states), so a table says what
//! it does. The user furthest below their share of the busy workers goes
//! first; within one user, the highest-priority collection, then the
//! oldest job (the order of their queue). Shares are weights per user
//! (`--share NAME=W`, 1 by default) over the users who have work, queued
//! or running: a user with nothing to do lends their share to the others,
//! so no worker idles while anyone waits. A user at their `--max-running`
//! quota is not offered one.
//!
//! Users are owners as the database keeps them: a digest of the token
//! (`user-…`), or "" on a farm without tokens (one user).

use std::collections::{BTreeSet, HashMap};

/// Where a job stands in its user's queue, lowest first: the collection's
/// priority (negated, so the highest first; paused collections sort past
/// every other), the collection's order, the job's.
pub type QueueKey = (i64, i64, i64);

/// A user with queued work, and the head of their queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub owner: String,
    pub head: QueueKey,
}

/// How the farm is shared, by owner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Each named user's weight (`--share`); others weigh 1.
    pub shares: HashMap<String, f64>,
    /// Most workers one user's jobs may hold at once (`--max-running`).
    pub max_running: HashMap<String, u32>,
    /// … and for every user not named there (`--max-running '*=N'`).
    pub max_running_each: Option<u32>,
    /// Most jobs one user may have queued (`--max-queued`) …
    pub max_queued: HashMap<String, u64>,
    /// … and for every user not named there.
    pub max_queued_each: Option<u64>,
}

impl Policy {
    /// The policy the flags give: `shares` as `NAME=W` (W > 0), the quotas
    /// as `NAME=N` or `*=N` (every user not named). NAME is a token's name
    /// (`--user-token NAME=TOKEN`), turned into its owner by `owner_named`.
    pub fn from_flags(shares: &[String], max_running: &[String], max_queued: &[String], owner_named: impl Fn(&str) -> Option<String>) -> Result<Policy, String> {
        let mut policy = Policy::default();
        let split = |flag: &str, arg: &str| -> Result<(Option<String>, String), String> {
            let (name, value) = arg.split_once('=').ok_or_else(|| format!("--{flag} {arg}: give NAME=VALUE"))?;
            if name == "*" && flag != "share" {
                return Ok((None, value.to_string()));
            }
            let owner = owner_named(name).ok_or_else(|| format!("--{flag} {arg}: no --user-token or --admin-token is named {name} (name one as NAME=TOKEN)"))?;
            Ok((Some(owner), value.to_string()))
        };
        for arg in shares {
            let (owner, w) = split("share", arg)?;
            let w: f64 = w.parse().ok().filter(|w: &f64| w.is_finite() && *w > 0.0).ok_or_else(|| format!("--share {arg}: the weight is a number above 0"))?;
            policy.shares.insert(owner.unwrap_or_default(), w);
        }
        for (flag, args) in [("max-running", max_running), ("max-queued", max_queued)] {
            for arg in args {
                let (owner, n) = split(flag, arg)?;
                let n: u64 = n.parse().map_err(|_| format!("--{flag} {arg}: the most is a whole number"))?;
                match (flag, owner) {
                    ("max-running", Some(o)) => drop(policy.max_running.insert(o, n.min(u32::MAX as u64) as u32)),
                    ("max-running", None) => policy.max_running_each = Some(n.min(u32::MAX as u64) as u32),
                    (_, Some(o)) => drop(policy.max_queued.insert(o, n)),
                    (_, None) => policy.max_queued_each = Some(n),
                }
            }
        }
        Ok(policy)
    }

    /// `owner`'s weight.
    pub fn share(&self, owner: &str) -> f64 {
        self.shares.get(owner).copied().unwrap_or(1.0)
    }

    /// Most workers `owner`'s jobs may hold, if limited.
    pub fn max_running(&self, owner: &str) -> Option<u32> {
        self.max_running.get(owner).copied().or(self.max_running_each)
    }

    /// Most jobs `owner` may have queued, if limited.
    pub fn max_queued(&self, owner: &str) -> Option<u64> {
        self.max_queued.get(owner).copied().or(self.max_queued_each)
    }
}

/// Each user's share of `busy` workers: their weight over the weights of
/// every user with work (`waiting` or `running`).
pub fn fair_shares(waiting: &[Waiting], running: &HashMap<String, u32>, policy: &Policy, busy: f64) -> HashMap<String, f64> {
    let active: BTreeSet<&str> = waiting.iter().map(|w| w.owner.as_str()).chain(running.iter().filter(|(_, n)| **n > 0).map(|(o, _)| o.as_str())).collect();
    let weights: f64 = active.iter().map(|o| policy.share(o)).sum();
    active.into_iter().map(|o| (o.to_string(), busy * policy.share(o) / weights)).collect()
}

/// In which order the users in `waiting` are offered the worker asking
/// (the first whose queue holds a job this worker can take gets it, so a
/// user whose jobs need a larger worker does not block the rest):
/// furthest below their share of the busy workers (this one counted)
/// first, ties to the head of the queue; users at their running quota
/// left out. `running`: each user's running jobs.
pub fn order(waiting: &[Waiting], running: &HashMap<String, u32>, policy: &Policy) -> Vec<String> {
    let runs = |o: &str| running.get(o).copied().unwrap_or(0);
    let busy = running.values().sum::<u32>() as f64 + 1.0;
    let shares = fair_shares(waiting, running, policy, busy);
    let below = |o: &str| shares.get(o).copied().unwrap_or(0.0) - runs(o) as f64;
    let mut offered: Vec<&Waiting> = waiting.iter().filter(|w| policy.max_running(&w.owner).is_none_or(|max| runs(&w.owner) < max)).collect();
    offered.sort_by(|a, b| below(&b.owner).total_cmp(&below(&a.owner)).then(a.head.cmp(&b.head)));
    offered.into_iter().map(|w| w.owner.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(users: &[(&str, QueueKey)]) -> Vec<Waiting> {
        users.iter().map(|(o, head)| Waiting { owner: o.to_string(), head: *head }).collect()
    }

    fn running(users: &[(&str, u32)]) -> HashMap<String, u32> {
        users.iter().map(|(o, n)| (o.to_string(), *n)).collect()
    }

    fn policy(shares: &[(&str, f64)], max_running: &[(&str, u32)]) -> Policy {
        Policy {
            shares: shares.iter().map(|(o, w)| (o.to_string(), *w)).collect(),
            max_running: max_running.iter().map(|(o, n)| (o.to_string(), *n)).collect(),
            ..Policy::default()
        }
    }

    #[test]
    fn the_user_furthest_below_their_share_goes_first() {
        // (queued heads, running, shares, quotas) → the order offered.
        let table: &[(&str, Vec<Waiting>, HashMap<String, u32>, Policy, &[&str])] = &[
            ("one user: theirs", waiting(&[("a", (0, 1, 1))]), running(&[("a", 7)]), Policy::default(), &["a"]),
            (
                "a newcomer before the one who holds every worker, although the holder's job is older and more urgent",
                waiting(&[("a", (-5, 1, 1)), ("b", (0, 9, 9))]),
                running(&[("a", 8)]),
                Policy::default(),
                &["b", "a"],
            ),
            ("equal standing: the head of the queue decides (priority, then age)", waiting(&[("a", (0, 2, 5)), ("b", (-1, 3, 6))]), running(&[("a", 2), ("b", 2)]), Policy::default(), &["b", "a"]),
            ("equal standing, equal priority: the older collection", waiting(&[("b", (0, 3, 6)), ("a", (0, 2, 5))]), running(&[]), Policy::default(), &["a", "b"]),
            // 4 busy + 1: a's share 5·3/4 = 3.75 (holds 3: 0.75 below);
            // b's 1.25 (holds 1: 0.25 below).
            ("weights: 3 to 1", waiting(&[("a", (0, 1, 1)), ("b", (0, 2, 2))]), running(&[("a", 3), ("b", 1)]), policy(&[("a", 3.0)], &[]), &["a", "b"]),
            // … at 4 to 1 held (6 busy with this one), both are 0.5 below
            // theirs (4.5 and 1.5): the head of the queue decides …
            ("weights: 3 to 1, a tie", waiting(&[("a", (0, 1, 1)), ("b", (0, 2, 2))]), running(&[("a", 4), ("b", 1)]), policy(&[("a", 3.0)], &[]), &["a", "b"]),
            // … and at 5 to 1, a is 0.25 below its 5.25, b 0.75 below.
            ("weights: 3 to 1, the heavy one near its share", waiting(&[("a", (0, 1, 1)), ("b", (0, 2, 2))]), running(&[("a", 5), ("b", 1)]), policy(&[("a", 3.0)], &[]), &["b", "a"]),
            // c runs but waits for nothing: it still counts among those
            // sharing, so a (0 of 2) goes before b (1 of 2).
            ("a user who only runs keeps their share", waiting(&[("b", (0, 1, 1)), ("a", (0, 2, 2))]), running(&[("b", 1), ("c", 4)]), Policy::default(), &["a", "b"]),
            ("a user at their quota is not offered one", waiting(&[("a", (0, 1, 1)), ("b", (0, 2, 2))]), running(&[("a", 2)]), policy(&[], &[("b", 0)]), &["a"]),
            ("under the quota: offered", waiting(&[("a", (0, 1, 1))]), running(&[("a", 1)]), policy(&[], &[("a", 2)]), &["a"]),
            ("nobody waiting: nobody offered", waiting(&[]), running(&[("a", 3)]), Policy::default(), &[]),
        ];
        for (what, w, r, p, expected) in table {
            assert_eq!(order(w, r, p), expected.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{what}");
        }
    }

    #[test]
    fn the_flags_name_users_by_their_tokens_names() {
        let named = |n: &str| (n == "ana" || n == "bo").then(|| format!("user-{n}"));
        let p = Policy::from_flags(&["ana=3".into(), "bo=0.5".into()], &["*=4".into(), "ana=8".into()], &["bo=100".into()], named).unwrap();
        assert_eq!((p.share("user-ana"), p.share("user-bo"), p.share("user-cy")), (3.0, 0.5, 1.0));
        assert_eq!((p.max_running("user-ana"), p.max_running("user-bo")), (Some(8), Some(4)));
        assert_eq!((p.max_queued("user-bo"), p.max_queued("user-ana")), (Some(100), None));
        for (shares, running, why) in [
            (vec!["cy=2"], vec![], "no --user-token or --admin-token is named cy"),
            (vec!["ana=0"], vec![], "a number above 0"),
            (vec!["ana=lots"], vec![], "a number above 0"),
            (vec!["*=2"], vec![], "no --user-token or --admin-token is named *"),
            (vec!["ana"], vec![], "give NAME=VALUE"),
            (vec![], vec!["ana=-1"], "a whole number"),
        ] {
            let s: Vec<String> = shares.iter().map(|s| s.to_string()).collect();
            let r: Vec<String> = running.iter().map(|s| s.to_string()).collect();
            let e = Policy::from_flags(&s, &r, &[], named).unwrap_err();
            assert!(e.contains(why), "{shares:?} {running:?}: {e}");
        }
    }

    #[test]
    fn quotas_for_everyone_yield_to_a_users_own() {
        let p = Policy { max_running_each: Some(2), max_running: [("vip".to_string(), 10)].into(), max_queued_each: Some(100), ..Policy::default() };
        assert_eq!((p.max_running("someone"), p.max_running("vip")), (Some(2), Some(10)));
        assert_eq!((p.max_queued("someone"), Policy::default().max_queued("someone")), (Some(100), None));
    }

    /// Leasing one job at a time by the rule, with jobs that all take as
    /// long, gives each user their weight's fraction of the workers: a
    /// farm of 12 shared 2:1, every worker freed in turn.
    #[test]
    fn leases_by_the_rule_converge_to_the_shares() {
        let p = policy(&[("a", 2.0)], &[]);
        let mut holding: Vec<String> = vec!["a".to_string(); 12]; // a had the farm to itself
        for round in 0..60 {
            let freed = round % holding.len();
            holding.remove(freed);
            let mut r = HashMap::new();
            holding.iter().for_each(|o| *r.entry(o.clone()).or_insert(0) += 1);
            let next = order(&waiting(&[("a", (0, 1, 1)), ("b", (0, 2, 2))]), &r, &p).remove(0);
            holding.insert(freed, next);
        }
        let a = holding.iter().filter(|o| *o == "a").count();
        assert_eq!((a, holding.len() - a), (8, 4), "{holding:?}");
    }
}
