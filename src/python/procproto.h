/*
 * procproto.h — the binding's names for the process-pool protocol, which
 * is defined once, in braid.h ("process pool: shared layout", BR_PP_).
 * Kept only while procpool.c and procworker.c still use these names.
 */
#ifndef BRAID_PROCPROTO_H
#define BRAID_PROCPROTO_H

#include "braid.h"

/* parent -> worker */
#define MSG_INIT BR_PP_MSG_INIT
#define MSG_CALL BR_PP_MSG_CALL
#define MSG_EXIT BR_PP_MSG_EXIT

/* worker -> parent */
#define MSG_RESULT BR_PP_MSG_RESULT
#define MSG_ERROR BR_PP_MSG_ERROR
#define MSG_INIT_FAILED BR_PP_MSG_INIT_FAILED
#define MSG_READY BR_PP_MSG_READY
#define MSG_SKIPPED BR_PP_MSG_SKIPPED

#define SLOTS BR_PP_SLOTS
#define SLOTS_BYTES BR_PP_SLOTS_BYTES
#define SLOT_QUEUED BR_PP_SLOT_QUEUED
#define SLOT_RUNNING BR_PP_SLOT_RUNNING
#define SLOT_CANCELLED BR_PP_SLOT_CANCELLED
#define SLOT_WORD(seq, state) BR_PP_SLOT_WORD(seq, state)
#define ACK_INDEX BR_PP_ACK_INDEX

#define WORKER_FD_MEM BR_PP_FD_MEM
#define WORKER_FD_TASK_DATA BR_PP_FD_TASK_DATA
#define WORKER_FD_TASK_SPACE BR_PP_FD_TASK_SPACE
#define WORKER_FD_RESULT_DATA BR_PP_FD_RESULT_DATA
#define WORKER_FD_RESULT_SPACE BR_PP_FD_RESULT_SPACE

#endif /* BRAID_PROCPROTO_H */
