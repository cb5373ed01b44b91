//! `tally ingest` and `tally dlq`: clients of a running server.

use super::client_args::{DeliveriesCommand, DlqCommand, KeysCommand, LetterFilterArgs, TargetArgs};
use std::path::Path;
use std::process::ExitCode;
use tally::api::proto;
use tally::domain::access::Role;
use tally::operator::{self, Target};
use tally::query::time;

fn target(args: TargetArgs, role: Role) -> Result<Target, ExitCode> {
    match args.credential.token(&[role]) {
        Ok(token) => Ok(Target {
            url: args.target,
            token,
        }),
        Err(error) => {
            eprintln!("tally: {error}");
            Err(ExitCode::from(66))
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

pub fn ingest(file: &Path, args: TargetArgs) -> ExitCode {
    let input = match std::fs::File::open(file) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) => {
            eprintln!("tally ingest: cannot open {}: {e}", file.display());
            return ExitCode::from(66);
        }
    };
    let target = match target(args, Role::Service) {
        Ok(target) => target,
        Err(code) => return code,
    };
    match runtime().block_on(operator::ingest_lines(&target, input)) {
        Ok(report) => {
            for (line, why) in &report.rejected {
                eprintln!("line {line}: {why}");
            }
            println!("{}", report.render());
            if report.rejected.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("tally ingest: {e}");
            ExitCode::from(1)
        }
    }
}

fn micros(flag: &str, text: &Option<String>) -> Result<u64, String> {
    match text {
        None => Ok(0),
        Some(t) => time::parse_time(t).map_err(|e| format!("--{flag}: {e}")),
    }
}

fn fresh_key() -> String {
    format!("dlq-{}", uuid::Uuid::now_v7())
}

pub fn keys(args: TargetArgs, command: KeysCommand) -> ExitCode {
    let target = match target(args, Role::Admin) {
        Ok(target) => target,
        Err(code) => return code,
    };
    match runtime().block_on(keys_run(target, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally keys: {e}");
            ExitCode::from(1)
        }
    }
}

async fn keys_run(target: Target, command: KeysCommand) -> Result<(), String> {
    use proto::identity_client::IdentityClient;
    let channel = tonic::transport::Endpoint::from_shared(target.url.clone())
        .map_err(|e| format!("{}: not a server URL: {e}", target.url))?
        .connect()
        .await
        .map_err(|e| format!("cannot reach {}: {e}", target.url))?;
    let mut client = IdentityClient::new(channel);
    let failed = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    let show = |k: &proto::ApiKeyInfo| {
        format!(
            "{}  {:<8} {:<24} fingerprint {}  created {} by {}{}",
            k.key_id,
            k.role,
            k.name,
            k.fingerprint,
            time::format_rfc3339(k.created_at_us),
            k.created_by,
            if k.revoked {
                format!("  REVOKED {}", time::format_rfc3339(k.revoked_at_us))
            } else {
                String::new()
            }
        )
    };
    match command {
        KeysCommand::Create {
            name,
            role,
            idempotency_key,
        } => {
            let request = proto::CreateApiKeyRequest {
                name,
                role,
                idempotency_key: idempotency_key.unwrap_or_else(|| format!("key-{}", uuid::Uuid::now_v7())),
            };
            let answer = client
                .create_api_key(target.request(request)?)
                .await
                .map_err(failed)?
                .into_inner();
            let key = answer.key.unwrap_or_default();
            println!("{}", show(&key));
            println!("key id: {}", key.key_id);
            println!("secret: {}", answer.secret);
            eprintln!("the secret is shown once; sign calls with it (docs/AUTH.md)");
        }
        KeysCommand::List => {
            let answer = client
                .list_api_keys(target.request(proto::ListApiKeysRequest {})?)
                .await
                .map_err(failed)?
                .into_inner();
            for key in &answer.keys {
                println!("{}", show(key));
            }
        }
        KeysCommand::Revoke { key_id, reason } => {
            let key = client
                .revoke_api_key(target.request(proto::RevokeApiKeyRequest { key_id, reason })?)
                .await
                .map_err(failed)?
                .into_inner();
            println!("{}", show(&key));
        }
    }
    Ok(())
}

pub fn deliveries(args: TargetArgs, command: DeliveriesCommand) -> ExitCode {
    let target = match target(args, Role::Admin) {
        Ok(target) => target,
        Err(code) => return code,
    };
    match runtime().block_on(deliveries_run(target, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally deliveries: {e}");
            ExitCode::from(1)
        }
    }
}

fn show_delivery(d: &proto::DeliveryInfo) {
    let next = match d.next_attempt_at_us {
        0 => String::new(),
        at => format!("  next {}", time::format_rfc3339(at)),
    };
    println!(
        "{}  {:<16} {:<16} account {}  event {}{}",
        d.delivery_id,
        d.state,
        d.event_kind,
        d.account_id,
        time::format_rfc3339(d.event_timestamp_us),
        next
    );
}

async fn deliveries_run(target: Target, command: DeliveriesCommand) -> Result<(), String> {
    use proto::deliveries_client::DeliveriesClient;
    let channel = tonic::transport::Endpoint::from_shared(target.url.clone())
        .map_err(|e| format!("{}: not a server URL: {e}", target.url))?
        .connect()
        .await
        .map_err(|e| format!("cannot reach {}: {e}", target.url))?;
    let mut client = DeliveriesClient::new(channel);
    let failed = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    let endpoint_line = |e: &proto::Endpoint| {
        let s = e.settings.clone().unwrap_or_default();
        format!(
            "endpoint {}  {:<8} {}  kinds {}  {:?} ack {:?}{}",
            e.endpoint_id,
            e.status,
            s.url,
            if s.event_kinds.is_empty() {
                "all".to_string()
            } else {
                s.event_kinds.join(",")
            },
            proto::DeliverySemantics::try_from(s.semantics).unwrap_or_default(),
            proto::AckMode::try_from(s.ack_mode).unwrap_or_default(),
            if s.ordered { "  ordered" } else { "" }
        )
    };
    let by_id = |endpoint_id| proto::EndpointRequest { endpoint_id };
    match command {
        DeliveriesCommand::Endpoints => {
            let answer = client
                .list_endpoints(target.request(proto::ListEndpointsRequest {})?)
                .await
                .map_err(failed)?
                .into_inner();
            for e in &answer.endpoints {
                println!("{}", endpoint_line(e));
            }
        }
        DeliveriesCommand::Register {
            url,
            kinds,
            semantics,
            explicit_ack,
            ordered,
            max_attempts,
            idempotency_key,
        } => {
            let semantics = match semantics.as_str() {
                "at-most-once" => proto::DeliverySemantics::AtMostOnce,
                "at-least-once" => proto::DeliverySemantics::AtLeastOnce,
                "exactly-once" => proto::DeliverySemantics::ExactlyOnce,
                other => {
                    return Err(format!(
                        "--semantics {other:?}: at-most-once, at-least-once or exactly-once"
                    ))
                }
            };
            let settings = proto::EndpointSettings {
                url,
                event_kinds: kinds,
                semantics: semantics as i32,
                ack_mode: if explicit_ack {
                    proto::AckMode::Explicit as i32
                } else {
                    0
                },
                ordered,
                max_attempts,
                ..Default::default()
            };
            let request = proto::RegisterEndpointRequest {
                settings: Some(settings),
                idempotency_key: idempotency_key.unwrap_or_else(|| format!("endpoint-{}", uuid::Uuid::now_v7())),
            };
            let answer = client
                .register_endpoint(target.request(request)?)
                .await
                .map_err(failed)?
                .into_inner();
            println!("{}", endpoint_line(&answer.endpoint.unwrap_or_default()));
            println!("secret: {}", answer.secret);
            eprintln!("the secret is shown once: verify each delivery's Tally-Signature with it (docs/DELIVERIES.md)");
        }
        DeliveriesCommand::List {
            endpoint,
            state,
            from,
            to,
            limit,
        } => {
            let request = proto::ListDeliveriesRequest {
                endpoint_id: endpoint,
                state: state.unwrap_or_default(),
                from_us: micros("from", &from)?,
                to_us: micros("to", &to)?,
                limit,
            };
            let answer = client
                .list_deliveries(target.request(request)?)
                .await
                .map_err(failed)?
                .into_inner();
            for d in &answer.deliveries {
                show_delivery(d);
            }
        }
        DeliveriesCommand::Show { delivery_id } => {
            let d = client
                .get_delivery(target.request(proto::GetDeliveryRequest { delivery_id })?)
                .await
                .map_err(failed)?
                .into_inner();
            show_delivery(&d);
            for a in &d.attempts {
                println!(
                    "  attempt {} at {}: {} in {} µs {}",
                    a.attempt,
                    time::format_rfc3339(a.at_us),
                    if a.status_code == 0 {
                        "no answer".to_string()
                    } else {
                        format!("HTTP {}", a.status_code)
                    },
                    a.latency_us,
                    a.error
                );
            }
        }
        DeliveriesCommand::Retry { delivery_id, reason } => {
            let answer = client
                .retry_delivery(target.request(proto::RetryDeliveryRequest { delivery_id, reason })?)
                .await
                .map_err(failed)?
                .into_inner();
            println!("retried: {}", answer.delivery_ids.join(" "));
        }
        DeliveriesCommand::Redrive {
            endpoint,
            from,
            to,
            reason,
        } => {
            let request = proto::RedriveDeliveriesRequest {
                endpoint_id: endpoint,
                from_us: micros("from", &from)?,
                to_us: micros("to", &to)?,
                reason,
            };
            let answer = client
                .redrive_deliveries(target.request(request)?)
                .await
                .map_err(failed)?
                .into_inner();
            println!(
                "retried {}: {}",
                answer.delivery_ids.len(),
                answer.delivery_ids.join(" ")
            );
        }
        DeliveriesCommand::Stats { endpoint } => {
            let s = client
                .get_endpoint_stats(target.request(by_id(endpoint))?)
                .await
                .map_err(failed)?
                .into_inner();
            println!(
                "delivered {}  acked {}  failed attempts {}  failed for good {}  retried by hand {}  pending {}  success {:.1}%  latency avg {} µs p99 {} µs",
                s.delivered,
                s.acked,
                s.failed_attempts,
                s.failed_permanent,
                s.retried_by_hand,
                s.pending,
                s.success_rate * 100.0,
                s.latency_average_us,
                s.latency_p99_us
            );
        }
        DeliveriesCommand::Pause { endpoint }
        | DeliveriesCommand::Resume { endpoint }
        | DeliveriesCommand::Delete { endpoint } => {
            let request = target.request(by_id(endpoint))?;
            let answer = match command {
                DeliveriesCommand::Pause { .. } => client.pause_endpoint(request).await,
                DeliveriesCommand::Resume { .. } => client.resume_endpoint(request).await,
                _ => client.delete_endpoint(request).await,
            }
            .map_err(failed)?
            .into_inner();
            println!("{}", endpoint_line(&answer.endpoint.unwrap_or_default()));
        }
    }
    Ok(())
}

pub fn dlq(args: TargetArgs, command: DlqCommand) -> ExitCode {
    let target = match target(args, Role::Admin) {
        Ok(target) => target,
        Err(code) => return code,
    };
    match runtime().block_on(run(target, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally dlq: {e}");
            ExitCode::from(1)
        }
    }
}

fn window(filter: &LetterFilterArgs) -> Result<(u64, u64), String> {
    Ok((micros("from", &filter.from)?, micros("to", &filter.to)?))
}

async fn run(target: Target, command: DlqCommand) -> Result<(), String> {
    let mut client = target.connect().await?;
    let failed = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    match command {
        DlqCommand::List {
            filter,
            cause,
            limit,
            include_retrying,
        } => {
            let (from, to) = window(&filter)?;
            let request = proto::ListDeadLettersRequest {
                r#type: filter.type_name.unwrap_or_default(),
                member_id: filter.member.unwrap_or_default(),
                received_from_us: from,
                received_to_us: to,
                cause_contains: cause,
                limit,
                include_retrying,
            };
            let page = client
                .list_dead_letters(target.request(request)?)
                .await
                .map_err(failed)?
                .into_inner();
            for letter in &page.letters {
                println!("{}", operator::letter_line(letter));
            }
            println!(
                "{} shown, {} matching, {} in the queue",
                page.letters.len(),
                page.matching,
                page.depth
            );
        }
        DlqCommand::Show { receipt } => {
            let request = proto::GetExternalEventRequest {
                receipt_sequence: receipt,
            };
            let status = client
                .get_external_event(target.request(request)?)
                .await
                .map_err(failed)?
                .into_inner();
            match status.letter {
                Some(letter) => println!("{}", operator::letter_details(&letter)),
                None => {
                    let state = proto::LetterState::try_from(status.state)
                        .map(|s| s.as_str_name().trim_start_matches("LETTER_STATE_").to_lowercase())
                        .unwrap_or_default();
                    println!("receipt {receipt}: {state} at sequence {}", status.resolved_sequence);
                }
            }
        }
        DlqCommand::Redrive {
            receipt,
            filter,
            max,
            key,
        } => {
            let (from, to) = window(&filter)?;
            let key = key.unwrap_or_else(fresh_key);
            eprintln!("idempotency key {key}");
            let request = proto::RedriveRequest {
                idempotency_key: key,
                receipt_sequence: receipt.unwrap_or(0),
                r#type: filter.type_name.unwrap_or_default(),
                member_id: filter.member.unwrap_or_default(),
                received_from_us: from,
                received_to_us: to,
                max_count: max,
                ..Default::default()
            };
            let response = client
                .redrive(target.request(request)?)
                .await
                .map_err(failed)?
                .into_inner();
            for result in &response.results {
                println!("{}", operator::redrive_line(result));
            }
            println!("{} letters", response.results.len());
        }
        DlqCommand::Discard { receipt, reason, key } => {
            let key = key.unwrap_or_else(fresh_key);
            eprintln!("idempotency key {key}");
            let request = proto::DiscardRequest {
                idempotency_key: key,
                receipt_sequence: receipt,
                reason,
                ..Default::default()
            };
            let response = client
                .discard(target.request(request)?)
                .await
                .map_err(failed)?
                .into_inner();
            let replayed = if response.replayed { " (replayed)" } else { "" };
            println!(
                "discarded receipt {receipt} at sequence {}{replayed}",
                response.sequence
            );
        }
        DlqCommand::Stats => {
            let stats = client
                .get_pipeline_stats(target.request(proto::GetPipelineStatsRequest {})?)
                .await
                .map_err(failed)?
                .into_inner();
            println!(
                "received {}  processed {}  retried {}  dead-lettered {}  re-driven {}  discarded {}  \
                 queue depth {}  retrying {}",
                stats.received,
                stats.processed,
                stats.retried,
                stats.dead_lettered,
                stats.redriven,
                stats.discarded,
                stats.dead_letter_depth,
                stats.retrying
            );
        }
    }
    Ok(())
}
