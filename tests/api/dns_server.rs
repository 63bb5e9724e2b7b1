//! A small authoritative DNS server on loopback (UDP) whose zone a test edits as it runs:
//! A, AAAA, CNAME and TXT records, CNAME chains followed, `*.` wildcards, NXDOMAIN for names
//! it does not hold. Every TestApp points `CERTDROP_DNS_RESOLVER` at one of its own.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME, TXT},
    },
};
use tokio::net::UdpSocket;

type Zone = HashMap<String, Vec<RData>>;

pub struct TestDns {
    pub addr: SocketAddr,
    pub zone: DnsZone,
    task: tokio::task::JoinHandle<()>,
}

/// The zone a TestDns serves; clones edit the same records.
#[derive(Clone, Default)]
pub struct DnsZone(Arc<Mutex<Zone>>);

impl std::ops::Deref for TestDns {
    type Target = DnsZone;

    fn deref(&self) -> &DnsZone {
        &self.zone
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl TestDns {
    /// Starts serving on a loopback port (inside a Tokio runtime).
    pub fn start() -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a DNS port");
        socket.set_nonblocking(true).unwrap();
        let socket = UdpSocket::from_std(socket).unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = DnsZone::default();
        let served = zone.0.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let answer = answer(&served.lock().unwrap(), &query);
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        Self { addr, zone, task }
    }
}

impl DnsZone {
    fn add(&self, name: &str, data: RData) {
        self.0
            .lock()
            .unwrap()
            .entry(key(name))
            .or_default()
            .push(data);
    }

    /// Removes every record at `name`.
    pub fn clear(&self, name: &str) {
        self.0.lock().unwrap().remove(&key(name));
    }

    pub fn txt(&self, name: &str, value: &str) {
        self.add(name, RData::TXT(TXT::new(vec![value.to_string()])));
    }

    pub fn address(&self, name: &str, ip: &str) {
        match ip.parse::<IpAddr>().expect("an IP address") {
            IpAddr::V4(v4) => self.add(name, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(name, RData::AAAA(AAAA(v6))),
        }
    }

    pub fn cname(&self, name: &str, target: &str) {
        let target = Name::from_ascii(format!("{}.", key(target))).unwrap();
        self.add(name, RData::CNAME(CNAME(target)));
    }
}

/// The records at `name`, or at the wildcard of its parent.
fn lookup<'z>(zone: &'z Zone, name: &str) -> Option<&'z Vec<RData>> {
    zone.get(name).or_else(|| {
        let (_, parent) = name.split_once('.')?;
        zone.get(&format!("*.{parent}"))
    })
}

fn answer(zone: &Zone, query: &Message) -> Message {
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true);
    let Some(question) = query.queries().first() else {
        return response.set_response_code(ResponseCode::FormErr).clone();
    };
    response.add_query(question.clone());
    let wanted = question.query_type();
    let mut name = key(&question.name().to_ascii());
    let mut owner = question.name().clone();
    let mut found_name = false;
    // Follow CNAMEs (at most 8), then answer the type asked for.
    for _ in 0..8 {
        let Some(records) = lookup(zone, &name) else {
            break;
        };
        found_name = true;
        let cname = records.iter().find_map(|r| match r {
            RData::CNAME(c) if wanted != RecordType::CNAME => Some(c.0.clone()),
            _ => None,
        });
        if let Some(target) = cname {
            response.add_answer(Record::from_rdata(
                owner.clone(),
                60,
                RData::CNAME(CNAME(target.clone())),
            ));
            name = key(&target.to_ascii());
            owner = target;
            continue;
        }
        for data in records.iter().filter(|r| r.record_type() == wanted) {
            response.add_answer(Record::from_rdata(owner.clone(), 60, data.clone()));
        }
        break;
    }
    if !found_name {
        response.set_response_code(ResponseCode::NXDomain);
    }
    response
}
