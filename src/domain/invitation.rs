//! Invitations: when the users an import creates are invited, and where a user's invitation
//! stands.
//!
//! The point of an import is that the people in the file are invited. An import with
//! [`InvitationPolicy::Send`] invites the users it creates when it commits, never before (its
//! users are not visible before either, and a failed import keeps none); with
//! [`InvitationPolicy::Hold`] they wait, HELD, until `SendInvitations`. The store keeps a
//! user's state only once something after its import's commit changed it; until then the
//! state is the creating import's decision (see `store::queries`), so that committing an
//! import is what invites its users, in its one transaction, and the upload's hot path writes
//! nothing more per user.

/// When the users an import creates are invited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InvitationPolicy {
    /// When the import commits (COMPLETED_SUCCESS or COMPLETED_PARTIAL).
    #[default]
    Send,
    /// Not until `SendInvitations` asks.
    Hold,
}

impl InvitationPolicy {
    /// How the policy is stored: `SEND` or `HOLD`.
    pub fn as_str(self) -> &'static str {
        match self {
            InvitationPolicy::Send => "SEND",
            InvitationPolicy::Hold => "HOLD",
        }
    }

    /// A policy as stored, read back; `None` is a corrupt row.
    pub fn from_stored(value: &str) -> Option<Self> {
        [Self::Send, Self::Hold]
            .into_iter()
            .find(|p| p.as_str() == value)
    }
}

/// Where a user's invitation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvitationState {
    /// Created by a HOLD import, not invited yet.
    Held,
    /// Invited; users from before invitations were tracked count as SENT.
    Sent,
    /// The user accepted (`AcceptInvitation`): a revert keeps such a user.
    Accepted,
    /// The invitation was withdrawn.
    Revoked,
}

impl InvitationState {
    /// How the state is stored: `HELD`, `SENT`, `ACCEPTED` or `REVOKED`.
    pub fn as_str(self) -> &'static str {
        match self {
            InvitationState::Held => "HELD",
            InvitationState::Sent => "SENT",
            InvitationState::Accepted => "ACCEPTED",
            InvitationState::Revoked => "REVOKED",
        }
    }

    /// A state as stored, read back; `None` is a corrupt row.
    pub fn from_stored(value: &str) -> Option<Self> {
        [Self::Held, Self::Sent, Self::Accepted, Self::Revoked]
            .into_iter()
            .find(|s| s.as_str() == value)
    }
}

/// What happened to a user, as the event feed tells it (`WatchUserEvents`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserEventKind {
    /// Invited: by a SEND import's commit, or by `SendInvitations`.
    Invited,
    /// Invited again (`SendInvitations` with `resend`).
    InvitationResent,
    /// Changed by an UPDATE import that committed.
    Updated,
    /// Removed by a revert.
    Removed,
    /// Accepted its invitation.
    InvitationAccepted,
}

impl UserEventKind {
    /// How the kind is stored: the proto's name without its prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            UserEventKind::Invited => "INVITED",
            UserEventKind::InvitationResent => "INVITATION_RESENT",
            UserEventKind::Updated => "UPDATED",
            UserEventKind::Removed => "REMOVED",
            UserEventKind::InvitationAccepted => "INVITATION_ACCEPTED",
        }
    }

    /// A kind as stored, read back; `None` is a corrupt row.
    pub fn from_stored(value: &str) -> Option<Self> {
        [
            Self::Invited,
            Self::InvitationResent,
            Self::Updated,
            Self::Removed,
            Self::InvitationAccepted,
        ]
        .into_iter()
        .find(|k| k.as_str() == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_read_back() {
        for policy in [InvitationPolicy::Send, InvitationPolicy::Hold] {
            assert_eq!(InvitationPolicy::from_stored(policy.as_str()), Some(policy));
        }
        for state in [
            InvitationState::Held,
            InvitationState::Sent,
            InvitationState::Accepted,
            InvitationState::Revoked,
        ] {
            assert_eq!(InvitationState::from_stored(state.as_str()), Some(state));
        }
        assert_eq!(InvitationState::from_stored("sent"), None);
    }
}
