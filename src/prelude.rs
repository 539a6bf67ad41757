//! The names a handler author needs, in one import: `use idemq::prelude::*;`.
//!
//! Handler side: [`HandlerContext`], [`HandlerError`], [`ResultExt`] (for `.retriable()?` and
//! `.permanent()?`), [`Json`], [`Handler`]. Wiring and testing a handler: [`Engine`],
//! [`EngineConfig`], [`Processor`], [`Disposition`], [`DeadLetterReason`], [`Message`],
//! [`Source`], [`CancellationToken`].
//!
//! ```
//! use idemq::prelude::*;
//!
//! async fn handle(ctx: HandlerContext) -> Result<usize, HandlerError> {
//!     let text = std::str::from_utf8(&ctx.message.payload).permanent()?;
//!     Ok(text.len())
//! }
//! ```

pub use crate::engine::{DeadLetterReason, Disposition, Engine, EngineConfig, Processor};
pub use crate::handler::{Handler, HandlerContext, HandlerError, Json, ResultExt};
pub use crate::message::{Message, Source};
pub use tokio_util::sync::CancellationToken;
