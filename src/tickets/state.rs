//! The ticket state machine: which kinds exist, which states, and which moves are allowed.
//! The database enforces the same moves with guarded updates (`store::transition`).

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketKind {
    /// First TLS for an app: assigns a free edge pair.
    Provision,
    /// A new certificate on the same pair.
    Update,
    /// Back to the previously deployed certificate.
    Rollback,
    /// Stop serving TLS and release the pair.
    Remove,
}

impl TicketKind {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "provision" => Some(Self::Provision),
            "update" => Some(Self::Update),
            "rollback" => Some(Self::Rollback),
            "remove" => Some(Self::Remove),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provision => "provision",
            Self::Update => "update",
            Self::Rollback => "rollback",
            Self::Remove => "remove",
        }
    }

    /// Whether the customer names the certificate (provision and update do).
    pub fn takes_certificate(self) -> bool {
        matches!(self, Self::Provision | Self::Update)
    }
}

/// What a provision or update deploys: a certificate the customer uploaded (or completed from
/// a CSR), or one certdrop obtains over ACME once the ticket is approved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Uploaded,
    Acme,
}

impl Source {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "uploaded" => Some(Self::Uploaded),
            "acme" => Some(Self::Acme),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uploaded => "uploaded",
            Self::Acme => "acme",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketState {
    Open,
    Approved,
    Deploying,
    Deployed,
    Failed,
    Rejected,
    Cancelled,
}

impl TicketState {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "open" => Some(Self::Open),
            "approved" => Some(Self::Approved),
            "deploying" => Some(Self::Deploying),
            "deployed" => Some(Self::Deployed),
            "failed" => Some(Self::Failed),
            "rejected" => Some(Self::Rejected),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }

    /// Approved or deploying: a deployment is under way, and its pages follow it.
    pub fn is_under_way(self) -> bool {
        matches!(self, Self::Approved | Self::Deploying)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Approved => "approved",
            Self::Deploying => "deploying",
            Self::Deployed => "deployed",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }

    /// The states a ticket may move to from this one.
    pub fn next(self) -> &'static [TicketState] {
        use TicketState::*;
        match self {
            Open => &[Approved, Rejected, Cancelled],
            Approved => &[Deploying, Failed],
            Deploying => &[Deployed, Failed],
            // Staff retry a failed deployment: approved again, with the same checks.
            Failed => &[Approved],
            Deployed | Rejected | Cancelled => &[],
        }
    }

    pub fn can_move_to(self, to: TicketState) -> bool {
        self.next().contains(&to)
    }

    /// The states a ticket must be in to move to `to`.
    pub fn sources(to: TicketState) -> Vec<TicketState> {
        use TicketState::*;
        [
            Open, Approved, Deploying, Deployed, Failed, Rejected, Cancelled,
        ]
        .into_iter()
        .filter(|s| s.can_move_to(to))
        .collect()
    }

    pub fn is_final(self) -> bool {
        self.next().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::TicketState::*;
    use super::*;

    #[test]
    fn only_the_documented_moves_are_allowed() {
        assert!(
            Open.can_move_to(Approved) && Open.can_move_to(Rejected) && Open.can_move_to(Cancelled)
        );
        assert!(
            Approved.can_move_to(Deploying)
                && Deploying.can_move_to(Deployed)
                && Deploying.can_move_to(Failed)
        );
        assert!(!Open.can_move_to(Deploying), "no path skips approval");
        assert!(!Open.can_move_to(Deployed));
        assert!(!Rejected.can_move_to(Approved));
        assert!(!Deployed.can_move_to(Open));
        assert!(
            Failed.can_move_to(Approved),
            "a failed deployment can be retried"
        );
        assert!(
            !Failed.can_move_to(Deploying),
            "a retry is approved again first"
        );
        assert_eq!(TicketState::sources(Approved), [Open, Failed]);
        assert_eq!(TicketState::sources(Failed), [Approved, Deploying]);
    }
}
