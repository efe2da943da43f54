use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};

/// Whether the process can serve, as reported by `/readyz`. Cheap to clone;
/// every clone shares one flag.
///
/// A process starts not ready, becomes ready once its real work runs, and
/// goes back to not ready when it starts to drain, so Kubernetes stops
/// sending it new work before it exits.
#[derive(Clone, Debug)]
pub struct Readiness {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
enum State {
    Ready,
    NotReady(Cow<'static, str>),
}

impl Readiness {
    /// A flag that is not ready yet, for `reason`.
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::NotReady(reason.into()))),
        }
    }

    /// Reports ready.
    pub fn set_ready(&self) {
        *self.lock() = State::Ready;
    }

    /// Reports not ready; `reason` is shown in the `/readyz` body.
    pub fn set_not_ready(&self, reason: impl Into<Cow<'static, str>>) {
        *self.lock() = State::NotReady(reason.into());
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.check().is_ok()
    }

    /// `Ok` when ready, otherwise the reason it is not.
    pub fn check(&self) -> Result<(), String> {
        match &*self.lock() {
            State::Ready => Ok(()),
            State::NotReady(reason) => Err(reason.to_string()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value that is always whole, so a panic in
        // another holder cannot have left it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_not_ready_and_clones_share_the_flag() {
        let readiness = Readiness::new("starting");
        let clone = readiness.clone();
        assert_eq!(clone.check(), Err("starting".to_owned()));
        readiness.set_ready();
        assert!(clone.is_ready());
        clone.set_not_ready(format!("draining {} calls", 3));
        assert_eq!(readiness.check(), Err("draining 3 calls".to_owned()));
    }
}
