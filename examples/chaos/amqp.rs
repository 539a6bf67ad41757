//! RabbitMQ side of a scenario: the queue, its dead-letter exchange and queue, publishing,
//! reading the dead letters back, and the broker fault (closing the consumers' connections).

use crate::workload::{Msg, ID_HEADER, KEY_HEADER};
use crate::DeadLetter;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The queue, dead-letter exchange and dead-letter queue of one scenario.
pub struct AmqpBus {
    url: String,
    conn: Connection,
    ch: Channel,
    /// The consumed queue.
    pub queue: String,
    dlx: String,
    dlq: String,
}

impl AmqpBus {
    /// Declares `chaos-<run>` (durable), the fanout exchange `chaos-<run>.dlx` and the queue
    /// `chaos-<run>.dlq` bound to it.
    pub async fn setup(url: &str, run: &str) -> Res<Self> {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let (queue, dlx, dlq) = (
            format!("chaos-{run}"),
            format!("chaos-{run}.dlx"),
            format!("chaos-{run}.dlq"),
        );
        for q in [&queue, &dlq] {
            ch.queue_declare(
                q.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        }
        ch.exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            dlq.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(AmqpBus {
            url: url.into(),
            conn,
            ch,
            queue,
            dlx,
            dlq,
        })
    }

    /// The `amqp_orders` flags that consume this queue and dead-letter to this exchange.
    pub fn consumer_args(&self) -> Vec<String> {
        [
            "--amqp-url",
            &self.url,
            "--queue",
            &self.queue,
            "--dead-letter-exchange",
            &self.dlx,
            "--prefetch",
            "4",
            "--concurrency",
            "2",
        ]
        .map(String::from)
        .to_vec()
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(&self, m: &Msg) -> Res<()> {
        let mut h = FieldTable::default();
        h.insert(ID_HEADER.into(), AMQPValue::LongString(m.id.clone().into()));
        if let Some(k) = &m.key {
            h.insert(
                KEY_HEADER.into(),
                AMQPValue::LongString(LongString::from(k.clone())),
            );
        }
        let confirm = self
            .ch
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                &m.payload,
                BasicProperties::default()
                    .with_headers(h)
                    .with_delivery_mode(2),
            )
            .await?
            .await?;
        if !confirm.is_ack() {
            return Err(format!("publish of {} not confirmed", m.id).into());
        }
        Ok(())
    }

    /// Ready messages on the consumed queue (unacked ones come back as ready when their
    /// consumer's connection closes).
    pub async fn ready(&self) -> Res<u32> {
        self.count(&self.queue).await
    }

    async fn count(&self, queue: &str) -> Res<u32> {
        let ch = self.conn.create_channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await?;
        let _ = ch.close(200, "ok".into()).await;
        Ok(q.message_count())
    }

    /// Takes every message off the dead-letter queue.
    pub async fn dead_letters(&self) -> Res<Vec<DeadLetter>> {
        let mut out = Vec::new();
        while let Some(m) = self
            .ch
            .basic_get(self.dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await?
        {
            let headers = m.delivery.properties.headers().clone().unwrap_or_default();
            let text = |name: &str| idemq::amqp::header_text(&headers, name);
            out.push(DeadLetter {
                id: text(ID_HEADER).unwrap_or_default(),
                key: text(KEY_HEADER),
                reason: text(idemq::headers::REASON).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Closes the broker connections of the given `amqp_orders` processes (they name their
    /// connection `amqp_orders-<pid>`); returns how many were closed.
    pub fn close_connections(pids: &[u32]) -> usize {
        let Ok(out) = std::process::Command::new("rabbitmqctl")
            .args(["-q", "list_connections", "pid", "client_properties"])
            .output()
        else {
            return 0;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut closed = 0;
        for line in text.lines() {
            let ours = pids
                .iter()
                .any(|p| line.contains(&format!("amqp_orders-{p}\"")));
            let Some(conn) = line.split_whitespace().next().filter(|_| ours) else {
                continue;
            };
            let ok = std::process::Command::new("rabbitmqctl")
                .args(["-q", "close_connection", conn, "idemq chaos: forced close"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                closed += 1;
            }
        }
        closed
    }

    /// Deletes the queues and the exchange.
    pub async fn cleanup(self) {
        for q in [&self.queue, &self.dlq] {
            let _ = self
                .ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self
            .ch
            .exchange_delete(self.dlx.as_str().into(), ExchangeDeleteOptions::default())
            .await;
        let _ = self.conn.close(200, "done".into()).await;
    }
}
