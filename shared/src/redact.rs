//! Text a job's owner reads (a failure's message, an attempt's log) with
//! the farm's own paths taken out: the storage location and data folder
//! become `<storage>`, any other absolute path or URL (a worker's scratch
//! folder, its own --storage) `<path>`. The full text stays in the
//! process's own log, for the operator.

/// `text` with `locations` as `<storage>` and any other absolute path or
/// URL as `<path>`, line by line (quotes and punctuation around a path
/// are kept).
pub fn paths(text: &str, locations: &[&str]) -> String {
    text.split('\n').map(|line| line_paths(line, locations)).collect::<Vec<_>>().join("\n")
}

fn line_paths(line: &str, locations: &[&str]) -> String {
    let mut out = line.to_string();
    for location in locations.iter().filter(|l| l.len() > 1) {
        out = out.replace(location.trim_end_matches('/'), "<storage>");
    }
    let mut redacted = String::with_capacity(out.len());
    for (i, word) in out.split(' ').enumerate() {
        if i > 0 {
            redacted.push(' ');
        }
        let bare = word.trim_start_matches(['`', '\'', '"', '(', '[', '=']);
        let bare = bare.rsplit_once('=').filter(|(k, _)| !k.contains('/')).map_or(bare, |(_, v)| v.trim_start_matches(['`', '\'', '"']));
        let path = (bare.starts_with('/') && bare.len() > 1) || bare.contains("://");
        if path {
            // Keep the quotes and punctuation around it.
            let trail: usize = bare.chars().rev().take_while(|c| "`'\")]:,;".contains(*c)).map(char::len_utf8).sum();
            redacted.push_str(&word[..word.len() - bare.len()]);
            redacted.push_str("<path>");
            redacted.push_str(&bare[bare.len() - trail..]);
        } else {
            redacted.push_str(word);
        }
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::paths;

    #[test]
    fn no_storage_or_host_path_is_left() {
        let cases = [
            ("cannot read inputs/ab from /srv/farm/storage: permission denied", "cannot read inputs/ab from <storage>: permission denied"),
            ("cannot write out.png to s3://bucket/farm/x: 503", "cannot write out.png to <storage>/x: 503"),
            ("open `/tmp/worker-7/scratch/a.ckpt`: disk full", "open `<path>`: disk full"),
            ("the loss became inf at iteration 3; try a smaller beta", "the loss became inf at iteration 3; try a smaller beta"),
            ("read (file:///etc/x) failed", "read (<path>) failed"),
            ("INFO checkpoint written key=\"/tmp/w/ckpt\" iteration=5", "INFO checkpoint written key=\"<path>\" iteration=5"),
            ("line one /srv/farm/storage/a\n/var/tmp/x at the start", "line one <storage>/a\n<path> at the start"),
        ];
        for (given, shown) in cases {
            assert_eq!(paths(given, &["/srv/farm/storage", "s3://bucket/farm/"]), shown, "{given}");
        }
    }
}
