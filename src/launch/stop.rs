//! How a stop proceeds: who gets which signal, what is waited for, and for how long.
//!
//! Owns: the stop policy as plain data ([`StopPlan`]), so it is unit-tested without a
//! container. The agent (the bootstrap process) always gets SIGTERM, so its shutdown scripts
//! run; the inner init gets its stop signal (SIGRTMIN+3 for systemd). Then envbox waits for the
//! agent, and for the init only when the init can act on the signal: the image's `/sbin/init`
//! does, envbox's own `sleep infinity` ignores SIGTERM as PID 1 and would only burn the grace
//! period. Whatever is left when the grace period ends is killed.

use std::time::Duration;

/// What is running when a stop begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Running {
    /// The bootstrap process (the agent) is still running.
    pub bootstrap: bool,
    /// The inner init is the image's `/sbin/init` (which handles its stop signal), not
    /// envbox's `sleep infinity`.
    pub image_init: bool,
    /// The signal that stops the inner init.
    pub init_signal: i32,
}

/// The stop, step by step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StopPlan {
    /// Signals to send first: to the bootstrap process, then to the init.
    pub signal_bootstrap: Option<i32>,
    pub signal_init: i32,
    /// Wait (within the grace period) for the bootstrap process to exit.
    pub wait_bootstrap: bool,
    /// Then wait (within what is left of it) for the init to exit.
    pub wait_init: bool,
    /// The grace period; then SIGKILL to every process of the container.
    pub grace: Duration,
}

/// The stop for `running`, with `grace` before everything is killed.
pub(crate) fn plan(running: Running, grace: Duration) -> StopPlan {
    StopPlan {
        signal_bootstrap: running.bootstrap.then_some(libc::SIGTERM),
        signal_init: running.init_signal,
        wait_bootstrap: running.bootstrap,
        wait_init: running.image_init,
        grace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(90);

    #[test]
    fn the_agent_is_always_signalled_and_waited_for() {
        let p = plan(
            Running {
                bootstrap: true,
                image_init: false,
                init_signal: libc::SIGTERM,
            },
            GRACE,
        );
        assert_eq!(p.signal_bootstrap, Some(libc::SIGTERM));
        assert!(p.wait_bootstrap);
        assert!(
            !p.wait_init,
            "sleep infinity ignores SIGTERM: no point waiting"
        );
        assert_eq!(p.grace, GRACE);
    }

    #[test]
    fn systemd_gets_its_signal_and_is_waited_for() {
        let rtmin3 = libc::SIGRTMIN() + 3;
        let p = plan(
            Running {
                bootstrap: false,
                image_init: true,
                init_signal: rtmin3,
            },
            GRACE,
        );
        assert_eq!(p.signal_bootstrap, None);
        assert_eq!(p.signal_init, rtmin3);
        assert!(!p.wait_bootstrap);
        assert!(p.wait_init);
    }
}
