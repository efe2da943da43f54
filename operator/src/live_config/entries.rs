//! What one user source gives: its users, and the rows or entries it could
//! not use, each with where it is and why.

use voicecluster_api::config::ha1;
use voicecluster_api::config::users::{check_display_name, check_ha1, check_user_name};
use voicecluster_api::grpc::ConfigUser;

/// How many bad rows a source lists in the status; the count is exact.
pub const ERRORS_LISTED: usize = 20;

/// What proves a user's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The password itself.
    Password(String),
    /// `MD5(user:realm:password)`, hex.
    Ha1(String),
}

/// One user of a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceUser {
    /// The SIP user name.
    pub name: String,
    /// Their password or HA1.
    pub credential: Credential,
    /// How they are shown, when the source says.
    pub display_name: Option<String>,
}

impl SourceUser {
    /// A user whose name and credential are checked.
    pub fn new(
        name: &str,
        credential: Credential,
        display_name: Option<String>,
    ) -> Result<Self, String> {
        check_user_name(name)?;
        if let Some(d) = &display_name {
            check_display_name(d)?;
        }
        match &credential {
            Credential::Password(p) if p.is_empty() => return Err("empty password".into()),
            Credential::Ha1(h) => check_ha1(h)?,
            Credential::Password(_) => {}
        }
        Ok(Self {
            name: name.to_string(),
            credential,
            display_name: display_name.filter(|d| !d.is_empty()),
        })
    }

    /// The user as a member gets it, in `realm`.
    pub fn config(&self, realm: &str) -> ConfigUser {
        ConfigUser {
            ha1: match &self.credential {
                Credential::Password(p) => ha1(&self.name, realm, p),
                Credential::Ha1(h) => h.to_ascii_lowercase(),
            },
            name: self.name.clone(),
            display_name: self.display_name.clone().unwrap_or_default(),
        }
    }
}

/// Everything one source gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    /// The enabled users, in the source's order.
    pub users: Vec<SourceUser>,
    /// Users marked disabled.
    pub disabled: usize,
    /// Rows or entries that could not be used.
    pub invalid: usize,
    /// The first [`ERRORS_LISTED`] of them, each with where and why.
    pub errors: Vec<String>,
}

impl Entries {
    /// Counts a row or entry that could not be used.
    pub fn refuse(&mut self, error: String) {
        self.invalid += 1;
        if self.errors.len() < ERRORS_LISTED {
            self.errors.push(error);
        }
    }
}
