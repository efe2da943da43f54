//! Where a member is in its life; the endpoint answers the edges'
//! heartbeats from it, and the role's driver moves it along.

/// Where a member is in its life, as the edges' heartbeats hear it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lifecycle {
    /// Getting the registrations and replicas from the other members: no
    /// new calls, and its dialogs go to their buddies (heartbeats get 503,
    /// "starting"), so nothing reaches it that it cannot know yet.
    Starting,
    /// Takes new calls.
    #[default]
    Serving,
    /// Stopping: no new calls from the edges (heartbeats get 503); the
    /// calls being set up finish.
    Draining,
    /// Its calls are its buddy's from now on: heartbeats say it is gone,
    /// so the edges send their dialogs to the buddy at once.
    Gone,
    /// Gone, and the buddy told to take every call over now.
    Left,
}
