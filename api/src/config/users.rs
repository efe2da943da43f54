//! The users file: `user:password` per line, `#` comments. What the users
//! Secret holds under `users`, and what a member reads from
//! `VC_USERS_FILE` when it runs without the operator.

use std::collections::HashMap;

/// What is wrong with a users file, by line (from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsersError {
    /// A line without the colon between user and password.
    #[error("line {0}: expected user:password")]
    NoColon(usize),
    /// A line with nothing before or after the colon.
    #[error("line {0}: empty user or password")]
    Empty(usize),
}

/// Why a user name cannot be a SIP user part here: the characters that
/// would break the digest's `user:realm:password` or a `user@domain` URI.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || name.contains([':', '@']) {
        return Err(format!("user name {name:?} is not a SIP user part"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("user name {name:?} is not a SIP user part"));
    }
    Ok(())
}

/// Why `name` cannot be a display name: one that would not fit a SIP
/// quoted string on one header line (a control character could end the
/// line and start a header of its own).
pub fn check_display_name(name: &str) -> Result<(), String> {
    if name.chars().count() > 128 {
        return Err(format!(
            "display name {name:?} is longer than 128 characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("display name {name:?} holds a control character"));
    }
    Ok(())
}

/// Why `ha1` is not an HA1: 32 hex digits.
pub fn check_ha1(ha1: &str) -> Result<(), String> {
    if ha1.len() == 32 && ha1.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err("HA1 is not 32 hex digits".to_string())
    }
}

/// Reads a users file into user → password.
pub fn parse_users(text: &str) -> Result<HashMap<String, String>, UsersError> {
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, password) = line.split_once(':').ok_or(UsersError::NoColon(n + 1))?;
        if user.is_empty() || password.is_empty() {
            return Err(UsersError::Empty(n + 1));
        }
        users.insert(user.to_string(), password.to_string());
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn users_files_are_checked_line_by_line() {
        let u = parse_users("# people\nalice:wonder\n\nbob:builder\n").unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u["bob"], "builder");
        assert_eq!(
            parse_users("alice:a\nbob\n").unwrap_err().to_string(),
            "line 2: expected user:password"
        );
        assert_eq!(parse_users("bob:\n"), Err(UsersError::Empty(1)));
    }
}
