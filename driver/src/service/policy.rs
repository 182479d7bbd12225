//! The storage policy: which locations a tenant's jobs may read and write.
//!
//! - `--tenant-root s3://bucket/tenants/{tenant}/` gives every tenant its own prefix;
//! - grants in the tenants file (`prefixes = [...]`) add prefixes per tenant;
//! - `--allow-local-files DIR` (which may hold `{tenant}` too) lets jobs use
//!   the driver's disk under DIR; without it `file://` locations are refused;
//! - the shuffle root and the UDF registry root are never a table or output,
//!   nor anything that contains them.
//!
//! Without a tenant root or grants, tenants share every object-store location
//! the driver reaches (a single-team driver); the driver says so at start-up.

use std::collections::HashMap;

use axum::http::StatusCode;
use ignis_core::job::{Access, JobLocation};
use ignis_core::location::Location;

use super::error::ApiError;

/// Stands for the tenant's name in a tenant root or local directory.
pub const TENANT_PLACEHOLDER: &str = "{tenant}";

#[derive(Clone, Debug, Default)]
pub struct StoragePolicy {
    /// A template holding `{tenant}`.
    tenant_root: Option<String>,
    grants: HashMap<String, Vec<Location>>,
    /// `--allow-local-files`, a template that may hold `{tenant}`.
    local_dir: Option<String>,
    /// Places that are the driver's own, by what they are.
    reserved: Vec<(&'static str, Location)>,
}

impl StoragePolicy {
    /// Checks the templates once (with a sample tenant name) so a bad flag
    /// stops the driver at start-up, not a job later.
    pub fn new(
        tenant_root: Option<String>,
        grants: HashMap<String, Vec<Location>>,
        local_dir: Option<String>,
    ) -> Result<Self, String> {
        if let Some(root) = &tenant_root {
            if !root.contains(TENANT_PLACEHOLDER) {
                return Err(format!(
                    "--tenant-root {root:?} must hold {TENANT_PLACEHOLDER}, so each tenant gets its own prefix"
                ));
            }
            expand(root, "sample", "--tenant-root").map_err(|e| e.body.message)?;
        }
        if let Some(dir) = &local_dir {
            let dir = expand(dir, "sample", "--allow-local-files").map_err(|e| e.body.message)?;
            if !dir.is_local() {
                return Err("--allow-local-files takes a directory on this machine".into());
            }
        }
        Ok(Self { tenant_root, grants, local_dir, reserved: Vec::new() })
    }

    /// Mark a location as the driver's own (shuffle root, UDF registry).
    pub fn reserve(&mut self, what: &'static str, location: Location) {
        self.reserved.push((what, location));
    }

    /// Whether tenants are kept apart by prefixes (else they share storage).
    pub fn isolates_tenants(&self) -> bool {
        self.tenant_root.is_some() || !self.grants.is_empty()
    }

    /// The object-store prefixes `tenant` may use.
    fn prefixes(&self, tenant: &str) -> Result<Vec<Location>, ApiError> {
        let mut out = Vec::new();
        if let Some(root) = &self.tenant_root {
            out.push(expand(root, tenant, "--tenant-root")?);
        }
        out.extend(self.grants.get(tenant).into_iter().flatten().cloned());
        Ok(out)
    }

    /// Every location of a job against the policy; the first refusal is a 403
    /// that names the location and what is allowed.
    pub fn check(&self, tenant: &str, locations: &[JobLocation]) -> Result<(), ApiError> {
        for JobLocation { field, location, access } in locations {
            if let Some((what, _)) = self.reserved.iter().find(|(_, r)| location.overlaps(r)) {
                return Err(forbidden(format!(
                    "{field}: {location} overlaps the driver's {what}; tables and outputs live elsewhere"
                )));
            }
            if location.is_local() {
                let Some(dir) = &self.local_dir else {
                    return Err(forbidden(format!(
                        "{field}: {location} is on the driver's local disk; this driver only reads and writes object \
                         storage (s3://) unless started with --allow-local-files DIR"
                    )));
                };
                let dir = expand(dir, tenant, "--allow-local-files")?;
                if !location.is_under(&dir) {
                    return Err(forbidden(format!(
                        "{field}: {location} is outside {dir}, the only local directory this driver lets jobs use"
                    )));
                }
                // The directory is the grant: each tenant's own when it holds {tenant}.
                continue;
            }
            if !self.isolates_tenants() {
                continue;
            }
            let prefixes = self.prefixes(tenant)?;
            if !prefixes.iter().any(|p| location.is_under(p)) {
                let verb = if *access == Access::Write { "write" } else { "read" };
                let allowed: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
                let allowed = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
                return Err(forbidden(format!(
                    "{field}: tenant '{tenant}' may not {verb} {location}; its prefixes are: {allowed}"
                )));
            }
        }
        Ok(())
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden_location", message)
}

/// A template with the tenant's name put in, parsed as a directory.
fn expand(template: &str, tenant: &str, flag: &str) -> Result<Location, ApiError> {
    let mut text = template.replace(TENANT_PLACEHOLDER, tenant);
    if !text.ends_with('/') {
        text.push('/');
    }
    Location::parse(&text, None, flag).map_err(ApiError::from_job_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(locations: &[(&str, Access)]) -> Vec<JobLocation> {
        locations
            .iter()
            .map(|(l, access)| JobLocation {
                field: "tables.t.location".into(),
                location: Location::parse(l, None, "t").unwrap(),
                access: *access,
            })
            .collect()
    }

    fn policy() -> StoragePolicy {
        let shared = Location::parse("s3://b/shared/", None, "g").unwrap();
        let grants = HashMap::from([("bob".to_string(), vec![shared])]);
        let mut p =
            StoragePolicy::new(Some("s3://b/tenants/{tenant}".into()), grants, Some("/srv/ignis/{tenant}".into()))
                .unwrap();
        p.reserve("shuffle root", Location::parse("s3://b/_shuffle/", None, "s").unwrap());
        p
    }

    #[test]
    fn tenants_stay_under_their_prefixes() {
        let p = policy();
        let ok = |t: &str, l: &str| p.check(t, &job(&[(l, Access::Read)])).is_ok();
        assert!(ok("alice", "s3://b/tenants/alice/orders/"));
        assert!(ok("alice", "file:///srv/ignis/alice/x.csv"));
        assert!(ok("bob", "s3://b/shared/x/"));
        assert!(!ok("alice", "s3://b/shared/x/"));
        assert!(!ok("alice", "s3://b/tenants/bob/orders/"));
        assert!(!ok("alice", "s3://b/tenants/alice/../bob/orders/"));
        assert!(!ok("alice", "file:///srv/ignis/bob/x.csv"));
        assert!(!ok("alice", "FILE:///etc/passwd"));
        let err = p.check("alice", &job(&[("s3://b/_shuffle/job-1/", Access::Write)])).unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        assert!(err.body.message.contains("shuffle root"), "{:?}", err.body);
        let err = p.check("alice", &job(&[("s3://b/", Access::Write)])).unwrap_err();
        assert!(err.body.message.contains("shuffle root"), "{:?}", err.body);
        let err = p.check("alice", &job(&[("s3://b/tenants/bob/", Access::Write)])).unwrap_err();
        assert!(err.body.message.contains("s3://b/tenants/alice/"), "{:?}", err.body);
    }

    #[test]
    fn templates_are_checked_at_start() {
        assert!(StoragePolicy::new(Some("s3://b/tenants/".into()), HashMap::new(), None).is_err());
        assert!(StoragePolicy::new(None, HashMap::new(), Some("s3://b/x/".into())).is_err());
        let open = StoragePolicy::new(None, HashMap::new(), None).unwrap();
        assert!(!open.isolates_tenants());
        assert!(open.check("a", &job(&[("s3://any/x", Access::Read)])).is_ok());
        assert!(open.check("a", &job(&[("/etc/passwd", Access::Read)])).is_err());
    }
}
