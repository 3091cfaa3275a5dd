/*
 * procproto.h — the messages between braid.ProcessPool and its workers.
 *
 * Each worker has two br_ring_t in one shared memfd: tasks go parent ->
 * worker, results worker -> parent. A message is (type, tag, payload); the
 * tag of a task and of its result is the task id. A worker handles its
 * tasks one at a time, in order, so results come back in the order the
 * tasks were sent.
 *
 * Worker process file descriptors (inherited, see br_proc_spawn):
 *   3 the memfd   4 task data   5 task space   6 result data   7 result space
 */
#ifndef BRAID_PROCPROTO_H
#define BRAID_PROCPROTO_H

/* parent -> worker */
#define MSG_INIT 1  /* payload: pickle of (initializer, initargs) */
#define MSG_CALL 2  /* payload: pickle of (fn, args, kwargs) */
#define MSG_EXIT 3  /* no payload: finish and exit 0 */

/* worker -> parent */
#define MSG_RESULT 11     /* payload: pickle of the return value */
#define MSG_ERROR 12      /* payload: pickle of the exception (remote traceback attached) */
#define MSG_INIT_FAILED 13
#define MSG_READY 14      /* no payload: started up, about to read tasks */
#define MSG_SKIPPED 15    /* no payload: the task was cancelled before it started */

/* After the two rings, a page of task slots: the state of each task sent
 * and not yet answered, indexed by its per-worker sequence number (the
 * message tag) modulo SLOTS. The parent writes QUEUED before sending; the
 * worker moves QUEUED -> RUNNING with a compare-and-swap before it runs the
 * task; the parent moves QUEUED -> CANCELLED the same way to cancel it.
 * Whichever swap wins decides, so a cancelled task never runs and a
 * started one is never reported cancelled. */
#define SLOTS 64
#define SLOTS_BYTES 4096
#define SLOT_QUEUED 1u
#define SLOT_RUNNING 2u
#define SLOT_CANCELLED 3u
#define SLOT_WORD(seq, state) (((uint64_t)(seq) << 2) | (state))
/* Word of the slot page after the slots: the seq of the last result the
 * parent has unpickled. Until then the worker keeps that result's
 * out-of-band memfds open (braid/_procworker.py). */
#define ACK_INDEX SLOTS

#define WORKER_FD_MEM 3
#define WORKER_FD_TASK_DATA 4
#define WORKER_FD_TASK_SPACE 5
#define WORKER_FD_RESULT_DATA 6
#define WORKER_FD_RESULT_SPACE 7

#endif /* BRAID_PROCPROTO_H */
