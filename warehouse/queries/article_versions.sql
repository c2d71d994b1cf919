-- Every version of one article (the one changed last), with how much its text grew or shrank.
SELECT version, fetched_at, title, text_chars,
       text_chars - lag(text_chars) OVER (ORDER BY version) AS chars_changed, content_hash
FROM articles
WHERE article_key = (SELECT article_key FROM articles_latest WHERE versions > 1
                     ORDER BY fetched_at DESC LIMIT 1)
ORDER BY version;
