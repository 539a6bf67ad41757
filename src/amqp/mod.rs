//! amqp consumer wrapper (in progress).
