//! Invitations from the import layer: `SendInvitations` and `AcceptInvitation`, scoped to the
//! caller's account and logged for the audit trail. The rule of what each changes is the
//! store's (`store::invitations`), the same on both backends.

use super::{ImportError, Importer};
use crate::domain::{ImportId, InvitationState, Scope};
use crate::store::{Invitees, StoredUser, UserFilter};

impl Importer {
    /// Invites the HELD users of `import_id`, or those with the addresses `emails` (mailbox
    /// keys), or those addresses among the import's users; with `resend`, the SENT ones again.
    /// How many were invited. `NotFound` for an import the account does not have.
    ///
    /// One transaction per address: a call cut off half way has invited some, and calling it
    /// again invites the rest, since a user already SENT is not invited twice.
    pub async fn send_invitations(
        &self,
        scope: &Scope,
        import_id: Option<&ImportId>,
        emails: &[String],
        resend: bool,
    ) -> Result<u64, ImportError> {
        let account_id = scope.account_id();
        let import = match import_id {
            Some(id) => Some(self.find(account_id, id).await?.key),
            None => None,
        };
        let store = self.store()?;
        let mut invited = 0;
        if emails.is_empty() {
            let who = Invitees {
                import,
                email: None,
            };
            invited = store.send_invitations(account_id, who, resend).await?;
        }
        for email in emails {
            let who = Invitees {
                import,
                email: Some(email),
            };
            invited += store.send_invitations(account_id, who, resend).await?;
        }
        tracing::info!(
            account_id = %account_id, import_id = import_id.map(ImportId::as_str),
            addresses = emails.len(), resend, invited, created_by = scope.caller().name(),
            "invitations sent"
        );
        Ok(invited)
    }

    /// Records that the user with the address `email` (a mailbox key) accepted: the user,
    /// ACCEPTED. `UserNotFound` when the account has no such user (or only one an import still
    /// running created); `FailedPrecondition` for a HELD or REVOKED user.
    pub async fn accept_invitation(
        &self,
        scope: &Scope,
        email: &str,
    ) -> Result<StoredUser, ImportError> {
        let account_id = scope.account_id();
        let store = self.store()?;
        let read = || async {
            let only = UserFilter {
                email: Some(email),
                ..UserFilter::default()
            };
            store
                .list_users(account_id, only, None, 1)
                .await?
                .pop()
                .ok_or_else(|| ImportError::UserNotFound(crate::domain::email::readable(email)))
        };
        let refused = |user: &StoredUser| {
            ImportError::FailedPrecondition(format!(
                "the invitation of {} is {}: only a SENT invitation can be accepted{}",
                crate::domain::email::readable(&user.email),
                user.invitation_state.as_str(),
                match user.invitation_state {
                    InvitationState::Held => "; send it first (SendInvitations)",
                    InvitationState::Revoked => "; send a new one first (SendInvitations)",
                    InvitationState::Sent | InvitationState::Accepted => "",
                }
            ))
        };
        let user = read().await?;
        if matches!(
            user.invitation_state,
            InvitationState::Held | InvitationState::Revoked
        ) {
            return Err(refused(&user));
        }
        if !store.accept_invitation(account_id, email).await? {
            // Changed in between (reverted, say): say what it is now.
            return Err(refused(&read().await?));
        }
        tracing::info!(account_id = %account_id, "invitation accepted");
        read().await
    }
}
