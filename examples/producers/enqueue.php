<?php
// Enqueue a task over HTTP from PHP, with no extension beyond the standard streams.
// `spool web` must run and SPOOL_WEB_TOKEN hold its token.
//   SPOOL_WEB_TOKEN=... php examples/producers/enqueue.php [URL]   (default http://127.0.0.1:8750)
// Prints the task id; exits 1 with the server's error otherwise.

function spool_enqueue(string $base, string $token, array $task): string
{
    $context = stream_context_create(['http' => [
        'method' => 'POST',
        'header' => "Content-Type: application/json\r\nAuthorization: Bearer {$token}\r\n",
        'content' => json_encode($task, JSON_THROW_ON_ERROR),
        'ignore_errors' => true,  // read the JSON error body of a 4xx too
        'timeout' => 10,
    ]]);
    $body = @file_get_contents(rtrim($base, '/') . '/api/tasks', false, $context);
    if ($body === false) {
        throw new RuntimeException("cannot reach spool web at {$base}");
    }
    $headers = function_exists('http_get_last_response_headers')
        ? http_get_last_response_headers() : $http_response_header;
    $status = (int) explode(' ', $headers[0] ?? 'HTTP/1.1 0')[1];
    $answer = json_decode($body, true);
    if ($status !== 202) {
        throw new RuntimeException("enqueue refused ({$status}): " . ($answer['error'] ?? $body));
    }
    return $answer['id'];
}

$base = $argv[1] ?? 'http://127.0.0.1:8750';
$token = getenv('SPOOL_WEB_TOKEN') ?: '';
try {
    echo spool_enqueue($base, $token, [
        'task' => 'echo',
        'args' => ['hello from PHP'],
        'kwargs' => new stdClass(),  // {} rather than []
    ]), "\n";
} catch (RuntimeException $e) {
    fwrite(STDERR, $e->getMessage() . "\n");
    exit(1);
}
