//! Events a VMM injects into a VCPU (`struct nvmm_x86_event`) and NVMM's
//! rules for them (spec §4.6).

use crate::error::{Error, Result};

/// `NVMM_VCPU_EVENT_EXCP`.
pub const EVENT_EXCP: u32 = 0;
/// `NVMM_VCPU_EVENT_INTR`.
pub const EVENT_INTR: u32 = 1;

/// Kind of event.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum EventKind {
    /// A hardware exception (#DE, #GP, #PF, ...), with an error code when
    /// the vector pushes one.
    Exception,
    /// An external interrupt; vector 2 means an NMI.
    Interrupt,
}

/// An event to inject at the next run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Event {
    /// Exception or interrupt.
    pub kind: EventKind,
    /// The vector.
    pub vector: u8,
    /// Error code pushed for exceptions that have one (see
    /// [`Event::has_error_code`]); ignored otherwise.
    pub error_code: u64,
}

/// Exceptions that push an error code: #DF, #TS, #NP, #SS, #GP, #PF, #AC,
/// #CP, #SX.
const ERROR_CODE_VECTORS: [u8; 9] = [8, 10, 11, 12, 13, 14, 17, 21, 30];

impl Event {
    /// An exception with an error code (ignored when the vector has none).
    pub const fn exception(vector: u8, error_code: u64) -> Event {
        Event { kind: EventKind::Exception, vector, error_code }
    }

    /// An external interrupt.
    pub const fn interrupt(vector: u8) -> Event {
        Event { kind: EventKind::Interrupt, vector, error_code: 0 }
    }

    /// A non-maskable interrupt (NVMM: interrupt with vector 2).
    pub const fn nmi() -> Event {
        Event::interrupt(2)
    }

    /// Builds an event from the C struct's fields, rejecting unknown types.
    pub fn from_raw(typ: u32, vector: u8, error_code: u64) -> Result<Event> {
        let kind = match typ {
            EVENT_EXCP => EventKind::Exception,
            EVENT_INTR => EventKind::Interrupt,
            _ => {
                return Err(Error::InvalidEvent {
                    why: "type must be NVMM_VCPU_EVENT_EXCP (0) or NVMM_VCPU_EVENT_INTR (1)",
                });
            }
        };
        Ok(Event { kind, vector, error_code })
    }

    /// Whether this is an NMI.
    pub const fn is_nmi(&self) -> bool {
        matches!(self.kind, EventKind::Interrupt) && self.vector == 2
    }

    /// Whether the exception pushes an error code.
    pub fn has_error_code(&self) -> bool {
        self.kind == EventKind::Exception && ERROR_CODE_VECTORS.contains(&self.vector)
    }

    /// Checks NVMM's rules: exceptions must be vectors 1 and 4-31 except 2
    /// (NMI, inject it as an interrupt with vector 2); #DE (0) and #BP (3)
    /// are refused like NVMM does.
    pub fn validate(&self) -> Result<()> {
        if self.kind == EventKind::Exception {
            let why = match self.vector {
                2 => Some("vector 2 is the NMI: inject it as an interrupt (Event::nmi())"),
                0 | 3 => Some("NVMM does not inject exceptions 0 (#DE) and 3 (#BP)"),
                32.. => Some("exception vectors must be below 32"),
                _ => None,
            };
            if let Some(why) = why {
                return Err(Error::InvalidEvent { why });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvmm_rules() {
        for v in 0..=255u8 {
            let ok = Event::exception(v, 0).validate().is_ok();
            assert_eq!(ok, v < 32 && v != 0 && v != 2 && v != 3, "exception {v}");
            assert!(Event::interrupt(v).validate().is_ok(), "interrupt {v}");
        }
        assert!(Event::exception(14, 2).has_error_code());
        assert!(!Event::exception(6, 0).has_error_code());
        assert!(!Event::interrupt(14).has_error_code());
        assert!(Event::nmi().is_nmi());
        assert!(Event::from_raw(2, 0, 0).is_err());
        assert_eq!(Event::from_raw(1, 2, 0).unwrap(), Event::nmi());
        assert_eq!(Event::exception(3, 0).validate().unwrap_err().errno(), libc::EINVAL);
    }
}
