/*
 * edgegov serial protocol, version 1: reference encoder/decoder for firmware.
 *
 * Portable C99, no malloc, no global state, no floating-point arithmetic
 * (floats are only copied bit for bit). The wire format is specified in
 * ../PROTOCOL.md; the section numbers below (§n) refer to it. The test suite
 * compiles this file with the system C compiler and holds it to the test
 * vectors in ../vectors/frames.hex and to the Python codec on random frames.
 *
 * Sending:   eg_writer w; eg_begin(&w, EG_DATA, seq++, now_ms);
 *            eg_put_u8(&w, 3); eg_put_u8(&w, 1); eg_put_u16(&w, 0);
 *            eg_put_f32(&w, t); ...; n = eg_finish(&w, wire);  -> uart_write(wire, n)
 * Receiving: eg_stream s; eg_stream_init(&s);
 *            for each byte b: if (eg_stream_push(&s, b, &frame) == EG_OK) handle(&frame);
 */
#ifndef EDGEGOV_FRAME_H
#define EDGEGOV_FRAME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EG_PROTOCOL_VERSION 1
#define EG_HEADER_LEN 14     /* version, type, seq, timestamp_ms (§1) */
#define EG_MIN_FRAME 18      /* header + CRC */
#define EG_MAX_FRAME 256     /* raw frame, header and CRC included (§1) */
#define EG_MAX_ENCODED 258   /* COBS(raw) at most (§2.2) */
#define EG_MAX_WIRE 259      /* COBS(raw) + 0x00 */

enum eg_type {
    EG_HELLO = 0x01,
    EG_DATA = 0x02,
    EG_HEARTBEAT = 0x03,
    EG_ERROR = 0x04,
    EG_ACK = 0x81,
    EG_COMMAND = 0x82
};

enum eg_kind { EG_KIND_REAL = 0, EG_KIND_INTEGER = 1, EG_KIND_BOOLEAN = 2 };

enum eg_command {
    EG_CMD_SEND_HELLO = 1,
    EG_CMD_SET_SAMPLING_RATE = 2,
    EG_CMD_ENTER_SAFE_STATE = 3,
    EG_CMD_USE_VERSION = 4
};

typedef enum {
    EG_OK = 0,          /* a valid frame */
    EG_MORE = 1,        /* stream: no complete frame yet */
    EG_ERR_CRC = 2,     /* CRC mismatch */
    EG_ERR_FRAMING = 3, /* bad COBS, bad length, malformed payload, oversized run */
    EG_ERR_VERSION = 4, /* valid CRC, unknown protocol version */
    EG_ERR_TYPE = 5     /* valid CRC, unknown message type */
} eg_status;

/* CRC-32/ISO-HDLC (§3). */
uint32_t eg_crc32(const uint8_t *p, size_t n);

/* COBS (§2.1). encode: out needs len + len/254 + 1 bytes; returns bytes written.
 * decode: returns 0 and sets *out_len, or -1 if invalid or longer than cap. */
size_t eg_cobs_encode(const uint8_t *in, size_t len, uint8_t *out);
int eg_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len);

/* ---- encoding --------------------------------------------------------- */
typedef struct {
    uint8_t buf[EG_MAX_FRAME];
    size_t len;
    int overflow; /* set when a put did not fit; eg_finish then returns 0 */
} eg_writer;

void eg_begin(eg_writer *w, uint8_t type, uint32_t seq, uint64_t timestamp_ms);
void eg_put_u8(eg_writer *w, uint8_t v);
void eg_put_u16(eg_writer *w, uint16_t v);
void eg_put_u32(eg_writer *w, uint32_t v);
void eg_put_f32(eg_writer *w, float v);
void eg_put_str(eg_writer *w, const char *s, size_t len); /* len <= 255 */
/* Append the CRC, COBS-encode into wire (EG_MAX_WIRE bytes) with the 0x00
 * delimiter; returns the bytes to send, or 0 if the frame did not fit. */
size_t eg_finish(eg_writer *w, uint8_t *wire);

/* ---- decoding --------------------------------------------------------- */
typedef struct {
    uint8_t version;
    uint8_t type;
    uint32_t seq;
    uint64_t timestamp_ms;
    const uint8_t *payload; /* points into raw */
    size_t payload_len;
    uint8_t raw[EG_MAX_FRAME];
    size_t raw_len;
} eg_frame;

/* Decode one delimiter-free segment; checks COBS, size, CRC, version, type and
 * that the payload has exactly the shape of its type (§4). */
eg_status eg_decode(const uint8_t *seg, size_t len, eg_frame *f);

typedef struct {
    const uint8_t *p;
    size_t left;
    int bad; /* set when a read ran past the end */
} eg_reader;

void eg_reader_init(eg_reader *r, const eg_frame *f);
uint8_t eg_get_u8(eg_reader *r);
uint16_t eg_get_u16(eg_reader *r);
uint32_t eg_get_u32(eg_reader *r);
float eg_get_f32(eg_reader *r);
/* A str field: *s points at len bytes of UTF-8 (not NUL-terminated). */
void eg_get_str(eg_reader *r, const uint8_t **s, uint8_t *len);

/* Byte-at-a-time stream decoder (e.g. from a UART interrupt). */
typedef struct {
    uint8_t buf[EG_MAX_ENCODED];
    size_t len;
    int skipping; /* inside an oversized run: drop until 0x00 */
} eg_stream;

void eg_stream_init(eg_stream *s);
/* EG_MORE until a delimiter ends a segment; then the segment's status
 * (EG_OK: *f holds the frame). An oversized run reports EG_ERR_FRAMING once. */
eg_status eg_stream_push(eg_stream *s, uint8_t byte, eg_frame *f);

#ifdef __cplusplus
}
#endif
#endif /* EDGEGOV_FRAME_H */
