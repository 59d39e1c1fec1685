//! What a pull can fail with (`PullError`): its `kind` label in `/metrics`, which
//! failures stop the pull loop, and how this node's own disk or store failing is told
//! apart (a full disk; a write that could not be made durable).

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("the active cannot be reached: {0}")]
    Unreachable(String),
    #[error("the active refused us: {0}")]
    Refused(String),
    #[error("divergence at seq {seq}: the active's event there is {ours}, ours is {theirs} (active head {active_head})")]
    Divergence {
        seq: u64,
        ours: String,
        theirs: String,
        active_head: u64,
    },
    #[error("the active sent bad data: {0}")]
    BadData(String),
    #[error("applying events failed: {0}")]
    Apply(String),
    #[error(
        "no space left on this node's disk (applying stopped; it resumes once space returns): {0}"
    )]
    NoSpace(String),
    /// A write could not be made durable (`Error::is_durability_lost`): the node stops.
    #[error("{0}")]
    DurabilityLost(String),
}

impl PullError {
    /// The `kind` label of `standin_pull_errors`.
    pub fn kind(&self) -> &'static str {
        match self {
            PullError::Unreachable(_) => "unreachable",
            PullError::Refused(_) => "refused",
            PullError::Divergence { .. } => "divergence",
            PullError::BadData(_) => "bad_data",
            PullError::Apply(_) => "apply",
            PullError::NoSpace(_) => "no_space",
            PullError::DurabilityLost(_) => "durability",
        }
    }

    /// A failure of this node's own disk or store: a full disk is told apart (it is
    /// reported as such and clears by itself once space returns). Store errors, which
    /// name no path, get the store's.
    pub fn local(error: standin_engine::Error, data_dir: &std::path::Path) -> PullError {
        let text = match &error {
            standin_engine::Error::Store(_) => {
                format!("{error} (the store in {})", data_dir.join("db").display())
            }
            _ => error.to_string(),
        };
        if error.is_durability_lost() {
            PullError::DurabilityLost(format!(
                "applying: a write could not be made durable ({text}): what it held may be lost; restart the node (it checks its log when it opens)"
            ))
        } else if crate::passive::space::is_no_space(&error) {
            PullError::NoSpace(text)
        } else {
            PullError::Apply(text)
        }
    }

    /// Errors that stop the loop until an operator (or the failover logic) acts.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            PullError::Divergence { .. } | PullError::DurabilityLost(_)
        )
    }
}
