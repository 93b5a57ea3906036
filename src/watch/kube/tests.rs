//! Unit tests of the relist diff: initial list, live events, relists, and rejections.

use super::relist::{Input, Output, Relist, Seen};
use crate::model::validate::{RejectReason, Rejection};

type R = Relist<&'static str, u32>;

fn init_apply(k: &'static str, v: u32) -> Input<&'static str, u32> {
    Input::InitApply(k, Some(format!("rv{v}")), Seen::Valid(v))
}

fn apply(k: &'static str, v: u32) -> Input<&'static str, u32> {
    Input::Apply(k, Some(format!("rv{v}")), Seen::Valid(v))
}

/// A rejection whose detail names the version, so tests can tell reports apart.
fn rejected(rv: &str) -> Seen<u32> {
    Seen::Rejected(Rejection::new(
        RejectReason::BadIp,
        format!("clusterIP: not an IP ({rv})"),
    ))
}

/// Runs a full relist of `objects` and returns what it produced, all steps together.
fn relist(state: &mut R, objects: &[(&'static str, u32)]) -> Output<&'static str, u32> {
    assert_eq!(
        state.step(Input::Init),
        Output::default(),
        "Init alone emits nothing"
    );
    let mut changes = Vec::new();
    for &(k, v) in objects {
        let out = state.step(init_apply(k, v));
        assert!(!out.listed, "listed only at InitDone");
        changes.extend(out.changes);
    }
    let mut done = state.step(Input::InitDone);
    changes.append(&mut done.changes);
    done.changes = changes;
    done
}

#[test]
fn initial_list_sends_every_object_then_listed() {
    let mut state = R::default();
    let out = relist(&mut state, &[("b", 2), ("a", 1)]);
    assert_eq!(out.changes, vec![("b", Some(2)), ("a", Some(1))]);
    assert!(out.listed);
    assert!(out.rejected.is_empty());
}

#[test]
fn empty_initial_list_still_reports_listed() {
    let mut state = R::default();
    let out = relist(&mut state, &[]);
    assert!(out.changes.is_empty());
    assert!(out.listed);
}

#[test]
fn apply_and_delete_after_the_list_pass_straight_through() {
    let mut state = R::default();
    relist(&mut state, &[("a", 1)]);
    assert_eq!(state.step(apply("b", 2)).changes, vec![("b", Some(2))]);
    assert_eq!(state.step(apply("a", 3)).changes, vec![("a", Some(3))]);
    assert_eq!(state.step(Input::Delete("a")).changes, vec![("a", None)]);
    assert!(!state.step(Input::Delete("a")).listed);
}

#[test]
fn delete_of_an_object_never_sent_emits_nothing() {
    let mut state = R::default();
    relist(&mut state, &[]);
    assert_eq!(state.step(Input::Delete("ghost")), Output::default());
}

#[test]
fn relist_resends_present_objects_and_deletes_only_what_vanished() {
    let mut state = R::default();
    relist(&mut state, &[("a", 1), ("b", 2), ("c", 3)]);
    let out = relist(&mut state, &[("a", 1), ("c", 4), ("d", 5)]);
    assert_eq!(
        out.changes,
        vec![("a", Some(1)), ("c", Some(4)), ("d", Some(5)), ("b", None)],
        "updates first, then a delete for b only"
    );
    assert!(out.listed);
    // b is gone for good: a later delete of it is a no-op.
    assert!(state.step(Input::Delete("b")).changes.is_empty());
}

#[test]
fn an_interrupted_relist_is_discarded_and_the_next_one_counts() {
    let mut state = R::default();
    relist(&mut state, &[("a", 1), ("b", 2)]);
    state.step(Input::Init);
    assert_eq!(
        state.step(init_apply("zzz", 9)).changes,
        vec![("zzz", Some(9))],
        "what a list reads is forwarded at once: it is that object's current state"
    );
    // The list failed half-way: nothing was deleted for it.
    // The watcher starts over with a new Init; only the complete list deletes.
    let out = relist(&mut state, &[("b", 2)]);
    assert_eq!(
        out.changes,
        vec![("b", Some(2)), ("a", None), ("zzz", None)]
    );
}

#[test]
fn a_list_holds_keys_not_objects_and_forwards_updates_before_any_delete() {
    let mut state = R::default();
    relist(&mut state, &[("a", 1), ("b", 2)]);
    state.step(Input::Init);
    assert_eq!(state.step(init_apply("b", 3)).changes, vec![("b", Some(3))]);
    assert_eq!(state.step(init_apply("c", 4)).changes, vec![("c", Some(4))]);
    assert_eq!(
        state.step(Input::InitDone).changes,
        vec![("a", None)],
        "the delete comes last"
    );
}

#[test]
fn object_ignored_on_relist_is_deleted() {
    let mut state = R::default();
    relist(&mut state, &[("a", 1)]);
    state.step(Input::Init);
    let out = state.step(Input::InitApply("a", Some("rv2".into()), Seen::Ignored));
    assert_eq!(out.changes, vec![("a", None)]);
    assert!(
        state.step(Input::InitDone).changes.is_empty(),
        "deleted once"
    );
}

#[test]
fn object_that_becomes_ignored_is_deleted_once() {
    let mut state = R::default();
    relist(&mut state, &[("a", 1)]);
    let out = state.step(Input::Apply("a", Some("rv2".into()), Seen::Ignored));
    assert_eq!(out.changes, vec![("a", None)]);
    let out = state.step(Input::Apply("a", Some("rv3".into()), Seen::Ignored));
    assert!(out.changes.is_empty(), "nothing to delete twice");
}

#[test]
fn valid_object_that_becomes_invalid_is_deleted_and_reported() {
    let mut state = R::default();
    relist(&mut state, &[("a", 1)]);
    let out = state.step(Input::Apply("a", Some("rv2".into()), rejected("rv2")));
    assert_eq!(out.changes, vec![("a", None)]);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].0, "a");
    assert_eq!(out.rejected[0].1.reason, RejectReason::BadIp);
    // Fixed again: served again.
    assert_eq!(state.step(apply("a", 3)).changes, vec![("a", Some(3))]);
}

#[test]
fn rejection_is_reported_once_per_resource_version_across_relists() {
    let mut state = R::default();
    state.step(Input::Init);
    let first = state.step(Input::InitApply("bad", Some("rv1".into()), rejected("rv1")));
    assert_eq!(first.rejected.len(), 1);
    assert!(
        state.step(Input::InitDone).changes.is_empty(),
        "a rejected object is absent"
    );

    state.step(Input::Init);
    let again = state.step(Input::InitApply("bad", Some("rv1".into()), rejected("rv1")));
    assert!(
        again.rejected.is_empty(),
        "same version seen on relist: not reported again"
    );
    state.step(Input::InitDone);

    let changed = state.step(Input::Apply("bad", Some("rv7".into()), rejected("rv7")));
    assert_eq!(
        changed.rejected.len(),
        1,
        "a new version that is still broken is reported"
    );
    assert!(
        changed.changes.is_empty(),
        "it was never sent, so there is nothing to delete"
    );
}

#[test]
fn rejection_forgotten_when_the_object_vanishes_is_reported_again_when_it_returns() {
    let mut state = R::default();
    state.step(Input::Init);
    state.step(Input::InitApply("bad", Some("rv1".into()), rejected("rv1")));
    state.step(Input::InitDone);
    // Relist without it: forgotten.
    relist(&mut state, &[]);
    state.step(Input::Init);
    let back = state.step(Input::InitApply("bad", Some("rv1".into()), rejected("rv1")));
    assert_eq!(back.rejected.len(), 1);
}

#[test]
fn deleted_rejected_object_is_reported_again_if_recreated_broken() {
    let mut state = R::default();
    relist(&mut state, &[]);
    let first = state.step(Input::Apply("bad", None, rejected("none")));
    assert_eq!(first.rejected.len(), 1);
    assert_eq!(state.step(Input::Delete("bad")), Output::default());
    let again = state.step(Input::Apply("bad", None, rejected("none")));
    assert_eq!(again.rejected.len(), 1);
}

#[test]
fn later_duplicate_in_a_list_wins() {
    let mut state = R::default();
    let mut changes = Vec::new();
    for input in [
        Input::Init,
        init_apply("a", 1),
        Input::InitApply("a", Some("rv2".into()), Seen::Ignored),
        init_apply("b", 2),
        init_apply("b", 3),
        Input::InitDone,
    ] {
        changes.extend(state.step(input).changes);
    }
    assert_eq!(changes.last(), Some(&("b", Some(3))));
    assert_eq!(
        changes.iter().rev().find(|(k, _)| *k == "a"),
        Some(&("a", None))
    );
    // Afterwards a is absent and b is sent: a delete of b is forwarded, of a not.
    assert!(state.step(Input::Delete("a")).changes.is_empty());
    assert_eq!(state.step(Input::Delete("b")).changes, vec![("b", None)]);
}

#[tokio::test]
async fn missing_kubeconfig_fails_at_the_read_step() {
    let path = std::path::Path::new("/nonexistent/kubeconfig");
    let Err(err) = super::client(Some(path), None).await else {
        panic!("no such file")
    };
    assert!(
        matches!(err, super::KubeError::ReadKubeconfig { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("/nonexistent/kubeconfig"), "{err}");
}

#[tokio::test]
async fn unparsable_master_url_is_named_in_the_error() {
    let Err(err) = super::client(None, Some("http://bad host")).await else {
        panic!("not a URI")
    };
    assert!(matches!(err, super::KubeError::ParseMaster { .. }), "{err}");
    assert!(
        err.to_string().contains("--master \"http://bad host\""),
        "{err}"
    );
}
