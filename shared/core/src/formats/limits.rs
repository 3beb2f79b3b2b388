//! Bounds on what one record, or a document read whole, may hold: input is hostile, and a
//! 10 GB line or a never-closed CSV quote would otherwise be buffered whole before any
//! parser could object. Readers sit on a [`Metered`] input that counts the bytes pulled
//! since the last record ended and fails the read past the bound, so a streamed file of
//! any size passes as long as each record is within it.

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

/// One NDJSON line, CSV row, XML record element or element of a streamed JSON array.
pub const MAX_RECORD_BYTES: u64 = 16 * 1024 * 1024;
/// One CSV field.
pub const MAX_CSV_FIELD_BYTES: usize = 1024 * 1024;
/// How deep XML elements may nest.
pub const MAX_XML_DEPTH: usize = 64;
/// A JSON document read whole (the program sees all of it); larger data streams as NDJSON,
/// CSV, XML or a JSON array without a whole-document program.
pub const MAX_DOCUMENT_BYTES: u64 = 64 * 1024 * 1024;

/// What went over its bound (carried inside the `io::Error` a [`Metered`] read fails with).
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("{what} is larger than {limit} bytes")]
pub struct TooLarge {
    pub what: &'static str,
    pub limit: u64,
}

impl TooLarge {
    /// The bound an I/O error from a [`Metered`] reader reports, if that is what it is.
    pub fn in_io(error: &std::io::Error) -> Option<TooLarge> {
        error.get_ref()?.downcast_ref::<TooLarge>().copied()
    }
}

/// The count a [`Metered`] reader shares with the parser loop that marks record ends.
#[derive(Debug, Clone)]
pub struct Meter {
    pulled: Rc<Cell<u64>>,
    bound: Rc<Cell<TooLarge>>,
}

impl Meter {
    /// A record ended: the next one starts counting from zero.
    pub fn record_done(&self) {
        self.pulled.set(0);
    }

    /// From here on, counts toward another bound (a document found to be a streamed array
    /// is bounded per element instead of whole).
    pub fn rebound(&self, what: &'static str, limit: u64) {
        self.bound.set(TooLarge { what, limit });
        self.record_done();
    }
}

/// `inner`, failing a read once more than the bound was pulled since the last
/// [`Meter::record_done`] (what a buffered parser reads ahead counts toward the next record,
/// so a record may overrun the bound by at most one buffer before it is refused).
pub struct Metered<R> {
    inner: R,
    meter: Meter,
}

impl<R: Read> Metered<R> {
    pub fn new(inner: R, what: &'static str, limit: u64) -> (Self, Meter) {
        let meter = Meter { pulled: Rc::new(Cell::new(0)), bound: Rc::new(Cell::new(TooLarge { what, limit })) };
        (Self { inner, meter: meter.clone() }, meter)
    }
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let pulled = self.meter.pulled.get().saturating_add(n as u64);
        self.meter.pulled.set(pulled);
        let bound = self.meter.bound.get();
        if pulled > bound.limit {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, bound));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_over_the_bound_fails_the_read_and_a_marked_end_starts_again() {
        let (mut reader, meter) = Metered::new(&[0u8; 100][..], "a record", 40);
        let mut buf = [0u8; 30];
        assert_eq!(reader.read(&mut buf).unwrap(), 30);
        meter.record_done();
        assert_eq!(reader.read(&mut buf).unwrap(), 30);
        let error = reader.read(&mut buf).unwrap_err();
        assert_eq!(TooLarge::in_io(&error), Some(TooLarge { what: "a record", limit: 40 }));
        assert_eq!(TooLarge::in_io(&std::io::Error::other("else")), None);
    }
}
