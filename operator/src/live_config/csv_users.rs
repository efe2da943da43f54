//! Users from a CSV file: a header row names the columns (`user`,
//! `password` or `ha1`, `display name`, `enabled`, in any order and case),
//! then one user per row. Every bad row is reported with its line.

use super::entries::{Credential, Entries, SourceUser};

/// Why the file as a whole cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    /// No header row.
    #[error("the file is empty: a header row is needed (user,password,display name,enabled)")]
    Empty,
    /// The header lacks a column every row needs.
    #[error("the header row has no {0:?} column")]
    NoColumn(&'static str),
    /// The header names a column twice, or one this file cannot mean.
    #[error("the header row: {0}")]
    BadHeader(String),
}

/// Where each field is.
struct Columns {
    user: usize,
    credential: (usize, bool),
    display_name: Option<usize>,
    enabled: Option<usize>,
    count: usize,
}

fn columns(header: &csv::StringRecord) -> Result<Columns, CsvError> {
    let (mut user, mut password, mut ha1, mut display, mut enabled) =
        (None, None, None, None, None);
    for (i, name) in header.iter().enumerate() {
        let normal: String = name
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '_' | '-'))
            .collect::<String>()
            .to_ascii_lowercase();
        let slot = match normal.as_str() {
            "user" | "username" => &mut user,
            "password" => &mut password,
            "ha1" => &mut ha1,
            "displayname" => &mut display,
            "enabled" => &mut enabled,
            _ => {
                return Err(CsvError::BadHeader(format!(
                    "unknown column {name:?} (known: user, password, ha1, display name, enabled)"
                )));
            }
        };
        if slot.replace(i).is_some() {
            return Err(CsvError::BadHeader(format!("column {name:?} twice")));
        }
    }
    let user = user.ok_or(CsvError::NoColumn("user"))?;
    let credential = match (password, ha1) {
        (Some(p), None) => (p, false),
        (None, Some(h)) => (h, true),
        (None, None) => return Err(CsvError::NoColumn("password")),
        (Some(_), Some(_)) => {
            return Err(CsvError::BadHeader(
                "both password and ha1: keep one".into(),
            ));
        }
    };
    Ok(Columns {
        user,
        credential,
        display_name: display,
        enabled,
        count: header.len(),
    })
}

/// Whether a cell of the `enabled` column enables.
fn enabled(cell: &str) -> Result<bool, String> {
    match cell.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "yes" | "1" | "y" => Ok(true),
        "false" | "no" | "0" | "n" => Ok(false),
        other => Err(format!("enabled is {other:?}, not true or false")),
    }
}

fn user(row: &csv::StringRecord, c: &Columns) -> Result<Option<SourceUser>, String> {
    if row.len() != c.count {
        return Err(format!("{} fields, the header has {}", row.len(), c.count));
    }
    let cell = |i: usize| row.get(i).unwrap_or_default();
    if let Some(i) = c.enabled
        && !enabled(cell(i))?
    {
        return Ok(None);
    }
    let secret = cell(c.credential.0).to_string();
    let credential = if c.credential.1 {
        Credential::Ha1(secret.trim().to_string())
    } else {
        Credential::Password(secret)
    };
    let display = c.display_name.map(|i| cell(i).trim().to_string());
    SourceUser::new(cell(c.user).trim(), credential, display).map(Some)
}

/// Reads `text`. Rows are numbered by the line they start on, from 1 for
/// the header; blank lines are skipped.
pub fn parse(text: &str) -> Result<Entries, CsvError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::None)
        .from_reader(text.as_bytes());
    let header = reader
        .headers()
        .map_err(|e| CsvError::BadHeader(e.to_string()))?
        .clone();
    if header.is_empty() || header.iter().all(|h| h.trim().is_empty()) {
        return Err(CsvError::Empty);
    }
    let c = columns(&header)?;
    let mut entries = Entries::default();
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(line, csv::Position::line);
                match user(&record, &c) {
                    Ok(Some(u)) => entries.users.push(u),
                    Ok(None) => entries.disabled += 1,
                    Err(e) => entries.refuse(format!("line {line}: {e}")),
                }
            }
            Err(e) => {
                let line = e.position().map_or(line, csv::Position::line);
                entries.refuse(format!("line {line}: {e}"));
                // A broken row (bad UTF-8, say) is skipped; the reader goes on.
            }
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_users_and_each_bad_row_names_its_line() {
        let text = "user,password,display name,enabled\n\
                    alice,wonder,\"Liddell, Alice\",true\n\
                    bob,builder,,\n\
                    carol,c1,Carol,no\n\
                    dave\n\
                    a b,x,,\n\
                    erin,e1,,maybe\n\
                    frank,,,\n\
                    gina,g1,\"Gina\nX-Evil: 1\",\n";
        let e = parse(text).unwrap();
        let names: Vec<&str> = e.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(e.users[0].display_name.as_deref(), Some("Liddell, Alice"));
        assert_eq!(e.disabled, 1);
        assert_eq!(e.invalid, 5);
        // What a member gets carries the display name.
        assert_eq!(
            e.users[0].config("voice.test").display_name,
            "Liddell, Alice"
        );
        assert_eq!(e.users[1].config("voice.test").display_name, "");
        assert_eq!(
            e.errors,
            [
                "line 5: 1 fields, the header has 4",
                "line 6: user name \"a b\" is not a SIP user part",
                "line 7: enabled is \"maybe\", not true or false",
                "line 8: empty password",
                "line 9: display name \"Gina\\nX-Evil: 1\" holds a control character",
            ]
        );
    }

    #[test]
    fn ha1_columns_and_headers_in_any_order_and_case() {
        let h = "0123456789abcdef0123456789ABCDEF";
        let e = parse(&format!("HA1,User_Name\n{h},alice\nzz,bob\n")).unwrap();
        assert_eq!(
            e.users[0].credential,
            Credential::Ha1(h.to_string()),
            "{e:?}"
        );
        assert_eq!(e.errors, ["line 3: HA1 is not 32 hex digits"]);
    }

    #[test]
    fn a_header_that_cannot_be_read_fails_the_file() {
        assert_eq!(parse(""), Err(CsvError::Empty));
        assert_eq!(parse("password\nx\n"), Err(CsvError::NoColumn("user")));
        assert_eq!(parse("user\nx\n"), Err(CsvError::NoColumn("password")));
        assert!(matches!(
            parse("user,password,phone\n"),
            Err(CsvError::BadHeader(m)) if m.contains("\"phone\"")
        ));
        assert!(matches!(
            parse("user,password,ha1\n"),
            Err(CsvError::BadHeader(_))
        ));
    }

    #[test]
    fn ten_thousand_rows_with_one_bad_line() {
        let mut text = String::from("user,password\n");
        for i in 0..10_000 {
            if i == 4_321 {
                text.push_str("broken\n");
            } else {
                text.push_str(&format!("u{i},p{i}\n"));
            }
        }
        let e = parse(&text).unwrap();
        assert_eq!(e.users.len(), 9_999);
        assert_eq!(e.errors, ["line 4323: 1 fields, the header has 2"]);
    }
}
