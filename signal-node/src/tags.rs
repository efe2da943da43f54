//! Tags and branches this process puts on the dialogs and transactions it
//! starts: unique among the members (the process id) and within the
//! process (a counter), so two members never make the same dialog.

/// Hands out fresh tags and branches.
#[derive(Debug, Default)]
pub struct Tags {
    next: u64,
}

impl Tags {
    /// A new From/To tag.
    pub fn tag(&mut self) -> String {
        self.next += 1;
        format!("vc{:x}{:x}", std::process::id(), self.next)
    }

    /// A new Via branch (RFC 3261 magic cookie first).
    pub fn branch(&mut self) -> String {
        format!("z9hG4bK{}", self.tag())
    }
}
