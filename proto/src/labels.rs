//! Worker labels and job requirements (pools), as the contract states
//! them: a worker registers labels `KEY=VALUE` (`pool=a100`, `zone=eu`,
//! and `device=cpu`, `model=…` it sets itself); a submit may require some;
//! a job goes only to a worker that has every label it requires. One
//! reading of a label for every side: the worker's flags, farmctl's, and
//! the coordinator's checks.

use std::collections::BTreeSet;

/// Most labels one worker registers, or one submit requires.
pub const MAX_LABELS: usize = 16;
/// Most bytes of a label's key …
pub const MAX_KEY_BYTES: usize = 32;
/// … and of its value.
pub const MAX_VALUE_BYTES: usize = 64;

/// A set of labels in its one written form: each `KEY=VALUE`, sorted,
/// joined by `,` ("" for none). Two sets are equal exactly when their
/// forms are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(BTreeSet<String>);

/// Why a label is refused, naming it.
pub fn check(label: &str) -> Result<(), String> {
    let shown: String = label.chars().take(80).collect();
    let (key, value) = label.split_once('=').ok_or_else(|| format!("label `{shown}`: write it KEY=VALUE (pool=a100)"))?;
    let key_ok = !key.is_empty() && key.len() <= MAX_KEY_BYTES && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if !key_ok {
        return Err(format!("label `{shown}`: its key is 1 to {MAX_KEY_BYTES} of a-z 0-9 _ . -"));
    }
    let value_ok = !value.is_empty() && value.len() <= MAX_VALUE_BYTES && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if !value_ok {
        return Err(format!("label `{shown}`: its value is 1 to {MAX_VALUE_BYTES} of A-Z a-z 0-9 _ . : -"));
    }
    Ok(())
}

impl Labels {
    /// The labels `given` (each `KEY=VALUE`), checked; a key given twice
    /// with different values is refused.
    pub fn parse<S: AsRef<str>>(given: &[S]) -> Result<Labels, String> {
        if given.len() > MAX_LABELS {
            return Err(format!("{} labels: at most {MAX_LABELS}", given.len()));
        }
        let mut set = BTreeSet::new();
        for label in given {
            let label = label.as_ref().trim();
            check(label)?;
            set.insert(label.to_string());
        }
        let mut keys = BTreeSet::new();
        if let Some(twice) = set.iter().filter_map(|l| l.split_once('=').map(|(k, _)| k)).find(|k| !keys.insert(*k)) {
            return Err(format!("label key `{twice}` is given two values"));
        }
        Ok(Labels(set))
    }

    /// The set a written form holds (as [`Labels::written`] made it; a
    /// form that is not one reads as the labels in it that are).
    pub fn read(written: &str) -> Labels {
        Labels(written.split(',').filter(|l| check(l).is_ok()).map(str::to_string).collect())
    }

    /// The one written form: sorted, `,`-joined ("" for none).
    pub fn written(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join(",")
    }

    /// Every label of `required` is one of these.
    pub fn satisfy(&self, required: &Labels) -> bool {
        required.0.is_subset(&self.0)
    }

    /// The labels of `required` these lack.
    pub fn missing<'a>(&self, required: &'a Labels) -> Vec<&'a str> {
        required.0.iter().filter(|l| !self.0.contains(*l)).map(String::as_str).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// These and `other`'s labels whose keys these lack (a worker's own
    /// labels over what it sets by itself).
    pub fn over(mut self, other: Labels) -> Labels {
        let keys: BTreeSet<String> = self.0.iter().filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string())).collect();
        self.0.extend(other.0.into_iter().filter(|l| l.split_once('=').is_some_and(|(k, _)| !keys.contains(k))));
        self
    }
}

/// A device's model as a label value: what is not allowed in one becomes
/// `-` (`AMD EPYC 7B13` → `AMD-EPYC-7B13`), cut to the most a value holds.
pub fn model_value(model: &str) -> String {
    let value: String = model.trim().chars().map(|c| if c.is_ascii_alphanumeric() || "_.:-".contains(c) { c } else { '-' }).take(MAX_VALUE_BYTES).collect();
    if value.is_empty() {
        "unknown".to_string()
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_have_one_written_form_and_a_job_needs_all_it_requires() {
        let worker = Labels::parse(&["zone=eu", "pool=a100", "device=cuda"]).unwrap();
        assert_eq!(worker.written(), "device=cuda,pool=a100,zone=eu");
        assert_eq!(Labels::read(&worker.written()), worker);
        assert!(worker.satisfy(&Labels::parse(&["pool=a100"]).unwrap()));
        assert!(worker.satisfy(&Labels::default()), "no requirement: any worker");
        let both = Labels::parse(&["pool=a100", "zone=us"]).unwrap();
        assert!(!worker.satisfy(&both));
        assert_eq!(worker.missing(&both), ["zone=us"]);
        assert_eq!(Labels::read("").written(), "");
    }

    #[test]
    fn a_bad_label_is_refused_naming_it() {
        for (given, says) in [
            (vec!["pool"], "write it KEY=VALUE"),
            (vec!["Pool=a"], "its key is 1 to 32"),
            (vec!["=a"], "its key is 1 to 32"),
            (vec!["pool="], "its value is 1 to 64"),
            (vec!["pool=a b"], "its value is 1 to 64"),
            (vec!["pool=a,zone=b"], "its value is 1 to 64"),
            (vec!["pool=a", "pool=b"], "key `pool` is given two values"),
        ] {
            let e = Labels::parse(&given).unwrap_err();
            assert!(e.contains(says), "{given:?}: {e}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("k{i}=v")).collect();
        assert!(Labels::parse(&many).unwrap_err().contains("at most 16"));
        assert_eq!(Labels::parse(&["pool=a", "pool=a"]).unwrap().written(), "pool=a", "the same label twice is one");
    }

    #[test]
    fn a_workers_own_labels_win_over_what_it_sets_itself() {
        let own = Labels::parse(&["pool=a100", "model=custom"]).unwrap();
        let set = Labels::parse(&["device=cpu", "model=AMD-EPYC"]).unwrap();
        assert_eq!(own.over(set).written(), "device=cpu,model=custom,pool=a100");
        assert_eq!(model_value("AMD EPYC 7B13 64-Core Processor"), "AMD-EPYC-7B13-64-Core-Processor");
        assert_eq!(model_value("  "), "unknown");
    }
}
