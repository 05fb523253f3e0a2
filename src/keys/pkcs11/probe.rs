//! What `--check` asks of a token without changing it: where the profile's
//! token is (or the blank slot a registration would initialise), and one
//! user login on a read-only session. Nothing here initialises a token,
//! sets a PIN, logs in as security officer or creates an object.

use super::{hsm_error, login_user, Module, Token};
use crate::error::Result;
use crate::keys::TokenLayout;
use cryptoki::slot::{Slot, TokenInfo};
use std::sync::Arc;

/// Where the profile's token is.
pub enum TokenSlot {
    /// The token, initialised, and what it says about itself (PIN flags).
    Found(Slot, Box<TokenInfo>),
    /// No such token, but a blank one a registration would initialise.
    Blank(Slot),
    /// Neither.
    Missing,
}

impl Module {
    /// The profile's token, else a blank slot; read from the slot list only.
    pub fn locate_token(&self, label: &str) -> Result<TokenSlot> {
        let slots = self.slots_with_token()?;
        if let Some((slot, info)) = slots
            .iter()
            .find(|(_, info)| info.token_initialized() && info.label() == label)
        {
            return Ok(TokenSlot::Found(*slot, Box::new(info.clone())));
        }
        Ok(slots
            .iter()
            .find(|(_, info)| !info.token_initialized())
            .map_or(TokenSlot::Missing, |(slot, _)| TokenSlot::Blank(*slot)))
    }

    /// Logs in as the user on a read-only session, exactly once, whatever
    /// the outcome. The token it returns creates nothing; dropping it logs
    /// out and finalises the module.
    pub fn log_in_read_only(self, slot: Slot, layout: TokenLayout) -> Result<Arc<Token>> {
        let label = layout.token_label;
        let session = self
            .ctx
            .open_ro_session(slot)
            .map_err(|e| hsm_error(format!("cannot open a session on token {label}"), e))?;
        login_user(&session, &self.settings.pin, label)?;
        Ok(Arc::new(Token::new(session, self, slot, layout)))
    }
}
