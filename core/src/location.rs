//! Locations: every table, output, shuffle and registry place Ignis touches,
//! parsed once into a [`Location`]. Parsing lowercases the scheme, decodes
//! percent-escapes, removes `.` and resolves `..` segments (refusing one that
//! would climb above the bucket or the root), and refuses what no store reads
//! (queries, fragments, credentials in the URL, unknown schemes). Access
//! checks then compare decoded path segments, so `FILE:///etc`, `file:/etc`,
//! `s3://b/t/alice/%2e%2e/bob` and `s3://b/t/alice/../bob` are each seen for
//! what they are.

use std::fmt;
use std::path::Path;

use crate::error::{IgnisError, Result};

/// Schemes Ignis has stores for.
const SCHEMES: &[&str] = &["file", "s3", "s3a", "memory"];

/// A parsed, normalised location: a URL whose path is a list of decoded segments.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    scheme: String,
    /// The bucket (object stores); empty for `file`.
    host: String,
    /// Decoded path segments, without empty ones.
    segments: Vec<String>,
    /// Written with a trailing `/` (a directory).
    directory: bool,
}

impl Location {
    /// Parse `raw`: a URL, or a path (made absolute against `base`, which a
    /// job file gives; without one a relative path is an error that names `field`).
    pub fn parse(raw: &str, base: Option<&Path>, field: &str) -> Result<Self> {
        let bad = |why: String| IgnisError::Job(format!("{field}: {raw:?} {why}"));
        let raw_trimmed = raw.trim();
        if raw_trimmed.is_empty() {
            return Err(bad("is empty".into()));
        }
        if raw_trimmed.chars().any(char::is_control) {
            return Err(bad("holds a control character".into()));
        }
        let url = match scheme_of(raw_trimmed) {
            Some(_) => url::Url::parse(raw_trimmed).map_err(|e| bad(format!("is not a valid URL: {e}")))?,
            None => {
                let path = Path::new(raw_trimmed);
                let abs = match (path.is_absolute(), base) {
                    (true, _) => path.to_path_buf(),
                    (false, Some(base)) => base.join(path),
                    (false, None) => {
                        return Err(bad("is a relative path; a submitted job needs an absolute path or a URL \
                                        (s3://bucket/...)"
                            .into()));
                    }
                };
                let abs = if abs.is_absolute() { abs } else { std::env::current_dir()?.join(abs) };
                url::Url::from_file_path(&abs).map_err(|()| bad("cannot be made a file URL".into()))?
            }
        };
        let scheme = url.scheme().to_ascii_lowercase();
        if !SCHEMES.contains(&scheme.as_str()) {
            return Err(bad(format!("has scheme '{scheme}'; Ignis reads and writes {}", SCHEMES.join(", "))));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("has a query or fragment (`?`, `#`); a location is a path".into()));
        }
        if !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
            return Err(bad("carries credentials or a port; give those in the driver's environment".into()));
        }
        let host = url.host_str().unwrap_or("").to_string();
        if scheme == "file" && !host.is_empty() && host != "localhost" {
            return Err(bad(format!("names host '{host}'; a file URL is file:///path")));
        }
        if scheme != "file" && host.is_empty() {
            return Err(bad("names no bucket".into()));
        }
        let host = if scheme == "file" { String::new() } else { host };
        // The path as written: the URL parser would quietly drop a `..` that climbs above the root.
        let path = if scheme_of(raw_trimmed).is_some() { written_path(raw_trimmed) } else { url.path() };
        let segments = normalise(path).map_err(bad)?;
        let directory = raw_trimmed.ends_with('/') || segments.is_empty();
        Ok(Self { scheme, host, segments, directory })
    }

    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// On the local disk of whoever reads it (`file://`).
    pub fn is_local(&self) -> bool {
        self.scheme == "file"
    }

    /// The segments before the first one holding a glob character: the part
    /// of the location that is fixed.
    fn fixed_segments(&self) -> &[String] {
        let end = self.segments.iter().position(|s| s.contains(['*', '?', '[', '{'])).unwrap_or(self.segments.len());
        &self.segments[..end]
    }

    /// Whether everything this location can name lies at or under `prefix`
    /// (whole segments: `t/alice` is not under `t/al`). `s3` and `s3a` are one store.
    pub fn is_under(&self, prefix: &Location) -> bool {
        self.same_store(prefix) && self.fixed_segments().starts_with(&prefix.segments)
    }

    /// Either location lies under the other: they share objects.
    pub fn overlaps(&self, other: &Location) -> bool {
        self.same_store(other)
            && (self.fixed_segments().starts_with(other.fixed_segments())
                || other.fixed_segments().starts_with(self.fixed_segments()))
    }

    fn same_store(&self, other: &Location) -> bool {
        let family = |s: &str| if s == "s3a" { "s3".to_string() } else { s.to_string() };
        family(&self.scheme) == family(&other.scheme) && self.host == other.host
    }

    /// The same location with a path segment appended (`{tenant}` templates).
    pub fn with_segment(&self, segment: &str) -> Self {
        let mut out = self.clone();
        out.segments.push(segment.to_string());
        out
    }

    /// The canonical URL text, as every store and reader takes it.
    pub fn url(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut url = match url::Url::parse(&format!("{}://{}/", self.scheme, self.host)) {
            Ok(url) => url,
            Err(_) => return write!(f, "{}://{}/{}", self.scheme, self.host, self.segments.join("/")),
        };
        if let Ok(mut path) = url.path_segments_mut() {
            path.clear().extend(&self.segments);
            if self.directory && !self.segments.is_empty() {
                path.push("");
            }
        }
        // Glob characters stay as written, so listing still expands them.
        let text = url.as_str().replace("%5B", "[").replace("%5D", "]").replace("%7B", "{").replace("%7D", "}");
        f.write_str(&text)
    }
}

/// `scheme` of `scheme:...` (RFC 3986: a letter, then letters, digits, `+-.`);
/// one letter is not a scheme.
fn scheme_of(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (scheme.len() > 1 && first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
        .then_some(scheme)
}

/// The path of `scheme://authority/path` or `scheme:/path` as written.
fn written_path(url: &str) -> &str {
    let after_scheme = url.split_once(':').map(|(_, rest)| rest).unwrap_or("");
    let path = match after_scheme.strip_prefix("//") {
        Some(rest) => rest.find('/').map(|i| &rest[i..]).unwrap_or(""),
        None => after_scheme,
    };
    path.split(['?', '#']).next().unwrap_or("")
}

/// A URL path as decoded segments, `.` removed and `..` applied.
fn normalise(path: &str) -> std::result::Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| format!("has a path segment {raw:?} that is not UTF-8 once decoded"))?;
        if decoded.contains(['/', '\\']) || decoded.chars().any(char::is_control) {
            return Err(format!("has an encoded `/`, `\\` or control character in segment {raw:?}"));
        }
        match decoded.as_ref() {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err("climbs above its root with `..`".into());
                }
            }
            segment => out.push(segment.to_string()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Location {
        Location::parse(s, None, "t").unwrap()
    }

    #[test]
    fn schemes_case_and_dots_are_normalised() {
        assert_eq!(loc("FILE:///etc/passwd").url(), "file:///etc/passwd");
        assert_eq!(loc("file:/etc/passwd").url(), "file:///etc/passwd");
        assert_eq!(loc("S3://b/t/alice/../bob/x.csv").url(), "s3://b/t/bob/x.csv");
        assert_eq!(loc("s3://b/t/alice/%2e%2E/bob/").url(), "s3://b/t/bob/");
        assert_eq!(loc("s3://b/t/a%20b/*.csv").url(), "s3://b/t/a%20b/*.csv");
        assert_eq!(loc("/data/./x/").url(), "file:///data/x/");
        let base = Path::new("/jobs/orders");
        assert_eq!(Location::parse("../x.csv", Some(base), "t").unwrap().url(), "file:///jobs/x.csv");
    }

    #[test]
    fn bad_locations_name_the_field() {
        for bad in [
            "s3://b/../../x",
            "s3://b/%2e%2e/x",
            "s3://b/a%2Fb",
            "relative/path",
            "http://example.com/x",
            "s3://key:secret@b/x",
            "s3://b/x?versionId=1",
            "file://otherhost/etc",
            "s3:///nobucket",
            "",
        ] {
            let err = Location::parse(bad, None, "tables.t.location").unwrap_err().to_string();
            assert!(err.contains("tables.t.location"), "{bad}: {err}");
        }
    }

    #[test]
    fn prefixes_compare_whole_segments() {
        let root = loc("s3://b/tenants/alice/");
        assert!(loc("s3://b/tenants/alice/x/").is_under(&root));
        assert!(loc("s3a://b/tenants/alice/x.csv").is_under(&root));
        assert!(!loc("s3://b/tenants/alice2/x").is_under(&root));
        assert!(!loc("s3://b/tenants/*/x").is_under(&root));
        assert!(!loc("s3://other/tenants/alice/x").is_under(&root));
        assert!(!loc("file:///tenants/alice/x").is_under(&root));
        assert!(loc("s3://b/").overlaps(&root));
        assert!(loc("s3://b/tenants/al*").overlaps(&loc("s3://b/tenants/")));
        assert!(!loc("s3://b/shared/").overlaps(&root));
    }
}
