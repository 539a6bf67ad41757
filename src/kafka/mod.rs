//! kafka consumer wrapper (in progress).
