//! `spec.sip.userSources`: where users come from besides the users Secret —
//! CSV files in ConfigMaps or Secrets, and LDAP directories.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The annotation whose every new value asks for an LDAP resync at once.
pub const LDAP_RESYNC_ANNOTATION: &str = "voicecluster.io/ldap-resync";

/// One source of users. Sources are read in order after `usersSecret`;
/// when two name the same user, the first one wins and the later entry is
/// counted as shadowed in `status.config.sources`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.csv) != has(self.ldap)").message("a user source sets exactly one of csv and ldap"))]
#[serde(rename_all = "camelCase")]
pub struct UserSource {
    /// Names the source in the status and in messages; unique in the list.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// A CSV file in a ConfigMap or Secret of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvSource>,
    /// An LDAP directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldap: Option<LdapSource>,
}

/// The kind of object a CSV file is kept in.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CsvObjectKind {
    /// A Secret (type Opaque): the right place for passwords.
    #[default]
    Secret,
    /// A ConfigMap: fine for HA1s, which are password equivalents too.
    ConfigMap,
}

/// What a row or entry that cannot be read does to the source.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum InvalidEntries {
    /// The whole source fails: the pods keep the version they have, and
    /// `status.config.error` names the first bad row.
    Reject,
    /// The good rows apply; the bad ones are listed in the status.
    Skip,
}

/// A CSV file of users: a header row naming the columns, then one user per
/// row. Columns: `user` (required), `password` or `ha1` (one of them),
/// `display name` (optional: the caller name members put in the From of
/// the calls the user places), `enabled` (optional: `true`/`false`,
/// `yes`/`no`, `1`/`0`; an empty cell is enabled). A disabled user cannot
/// register or call. Applies live, like the users Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CsvSource {
    /// `Secret` or `ConfigMap`.
    #[serde(default)]
    pub kind: CsvObjectKind,
    /// The object's name, in this namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The key holding the file.
    #[serde(default = "default_csv_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// `Reject` (the default) or `Skip`.
    #[serde(default = "reject")]
    pub invalid_rows: InvalidEntries,
}

/// Which attribute of an LDAP entry holds what.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LdapAttributes {
    /// The SIP user name.
    #[serde(default = "default_uid")]
    pub user: String,
    /// The cleartext password. A value stored hashed (`{SSHA}…`, `{CRYPT}…`)
    /// cannot make a digest HA1: that entry is refused with the reason;
    /// map `ha1` instead for such directories.
    #[serde(default = "default_password")]
    pub password: String,
    /// An attribute holding the HA1 (`MD5(user:domain:password)`, hex);
    /// used instead of `password` where an entry has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha1: Option<String>,
    /// The display name: the caller name members put in the From of the
    /// calls the user places.
    #[serde(default = "default_display_name")]
    pub display_name: String,
}

impl Default for LdapAttributes {
    fn default() -> Self {
        Self {
            user: default_uid(),
            password: default_password(),
            ha1: None,
            display_name: default_display_name(),
        }
    }
}

/// An LDAP directory of users, searched on every replica of the operator
/// every `syncIntervalSeconds`, and at once whenever the VoiceCluster's
/// `voicecluster.io/ldap-resync` annotation takes a new value. A failed
/// search keeps the users of the last good one; until a first good search,
/// the source fails and the pods keep the version they have.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!(has(self.startTLS) && self.startTLS && self.url.startsWith('ldaps://'))").message("startTLS is for ldap:// URLs; ldaps:// is TLS already"))]
#[serde(rename_all = "camelCase")]
pub struct LdapSource {
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    #[schemars(length(min = 8, max = 512), regex(pattern = r"^ldaps?://[^/?#\s]+/?$"))]
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before binding.
    #[serde(default, rename = "startTLS")]
    pub start_tls: bool,
    /// A Secret (type Opaque) with keys `bindDN` and `password`; without
    /// it the search binds anonymously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub bind_secret: Option<String>,
    /// A Secret (type Opaque) whose key `ca.crt` holds the PEM certificates
    /// that TLS trusts; without it, the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub ca_secret: Option<String>,
    /// Where the search starts, e.g. `ou=people,dc=example,dc=com`.
    #[schemars(length(min = 1, max = 1024))]
    pub base_dn: String,
    /// The search filter.
    #[serde(default = "default_filter")]
    #[schemars(length(min = 3, max = 4096))]
    pub filter: String,
    /// Which attributes hold the user, password and display name.
    #[serde(default)]
    pub attributes: LdapAttributes,
    /// Seconds between searches.
    #[serde(default = "default_sync_interval")]
    #[schemars(range(min = 10, max = 86400))]
    pub sync_interval_seconds: i32,
    /// Seconds a search may take, connecting included.
    #[serde(default = "default_ldap_timeout")]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_seconds: i32,
    /// `Skip` (the default: an entry that cannot be used is listed in the
    /// status and left out) or `Reject` (the source fails).
    #[serde(default = "skip")]
    pub invalid_entries: InvalidEntries,
}

fn default_csv_key() -> String {
    "users.csv".into()
}
fn reject() -> InvalidEntries {
    InvalidEntries::Reject
}
fn skip() -> InvalidEntries {
    InvalidEntries::Skip
}
fn default_uid() -> String {
    "uid".into()
}
fn default_password() -> String {
    "userPassword".into()
}
fn default_display_name() -> String {
    "displayName".into()
}
fn default_filter() -> String {
    "(objectClass=inetOrgPerson)".into()
}
fn default_sync_interval() -> i32 {
    300
}
fn default_ldap_timeout() -> i32 {
    10
}
